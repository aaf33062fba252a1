"""MobileBERT distillation on micro models: copies, freezing, gradients, steps, the CLI.

Fast tests drive the recipe and the trainer's step functions directly on
2- and 3-layer micro models and a fixed synthetic batch; the end-to-end runs
of each config through `mbert-jax train` are marked slow.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from xla_flags import FAST_COMPILE, with_devices

from configs import common
from mbert_jax import recipes
from mbert_jax.distill.teacher import host_init
from mbert_jax.models import io
from mbert_jax.train.labels import make_labels
from mbert_jax.train.logs import read_metrics
from mbert_jax.train.optimizers import make_optimizer
from mbert_jax.train.step import TrainState, make_train_step

ROOT = Path(__file__).resolve().parents[2]


def make_config(strategy="pkt", layers=2, arg="", **distill):
    c = common.mobilebert(strategy, f"runlocal,data=synthetic,layers={layers}{arg}")
    c.data.update(global_batch_size=4, max_seq_length=16, max_predictions_per_seq=3)
    c.student.overrides.attention_dropout = 0.0  # a deterministic objective to compare
    c.optimizer.learning_rate = 3e-4  # small steps: the first ones must descend
    c.distill.update(layer_steps=2, pd_steps=2, **distill)
    c.distill.pd_schedule.warmup_steps = 0
    return c


def flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


class Setup:
    """A recipe with its initial student (teacher copies applied), teacher and one batch."""

    def __init__(self, config):
        self.config = config
        self.recipe = recipes.build(config)
        # The model's init would compile for seconds; draw like it on the host.
        shapes = nn.meta.unbox(jax.eval_shape(self.recipe.init_params, jax.random.PRNGKey(0)))
        init = host_init(shapes, 0.02, seed=7)
        self.fresh = init
        self.params = jax.tree.map(jnp.asarray, self.recipe.initial_overrides(init))
        self.teacher = jax.tree.map(jnp.asarray, self.recipe.load_teacher_params())
        self.batch = jax.tree.map(jnp.asarray, next(self.recipe.train_data(0, 1)))

    def stage(self, name):
        return next(s for s in self.recipe.stages() if s.name == name)

    def evaluate(self, stage, params):
        fn = jax.jit(lambda p: self.recipe.evaluate(stage, p, self.teacher, self.batch))
        return fn(params)

    def train(self, stage, params, steps):
        """`steps` trainer steps of `stage` on the fixed batch, with a fresh stage optimizer."""
        labels = make_labels(params, stage.rules)
        tx, _ = make_optimizer(self.config.optimizer, labels, stage.steps, stage.schedule)
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(1))
        step = jax.jit(make_train_step(self.recipe, stage, tx))
        history = []
        for _ in range(steps):
            state, metrics = step(state, self.batch, self.teacher)
            history.append(jax.device_get(metrics))
        return state, history


@pytest.fixture(scope="module")
def pkt2():
    return Setup(make_config("pkt", layers=2))


def test_initial_overrides_copy_embeddings_and_mlm_head_but_not_a_different_norm(pkt2):
    student, teacher, fresh = flat(pkt2.params), flat(pkt2.teacher), flat(pkt2.fresh)
    copied = [
        "encoder/embeddings/word_embeddings/embedding",
        "encoder/embeddings/position_embeddings/embedding",
        "encoder/embeddings/token_type_embeddings/embedding",
        "encoder/embeddings/embedding_transform/kernel",
        "encoder/embeddings/embedding_transform/bias",
        "mlm/transform/kernel",
        "mlm/transform/bias",
        "mlm/transform_norm/scale",
        "mlm/transform_norm/bias",
        "mlm/extra_output_weights",
        "mlm/output_bias",
    ]
    for key in copied:
        np.testing.assert_array_equal(student[key], teacher[key], err_msg=key)
    assert not np.array_equal(fresh["mlm/transform/kernel"], teacher["mlm/transform/kernel"])
    # MobileBERT's NoNorm and IB-BERT's LayerNorm: the student keeps its own norm.
    for key in ("encoder/embeddings/norm/scale", "encoder/embeddings/norm/bias"):
        np.testing.assert_array_equal(student[key], fresh[key])
    untouched = [k for k in student if k.startswith(("encoder/layers_", "nsp/"))]
    assert untouched and all(np.array_equal(student[k], fresh[k]) for k in untouched)


def test_same_normalization_copies_the_embedding_norm_and_a_bf16_teacher_is_held_in_bf16():
    c = make_config()
    c.teacher.overrides.normalization = "no_norm"
    c.teacher.dtype = "bfloat16"
    s = Setup(c)
    teacher = flat(s.teacher)
    assert {v.dtype for v in teacher.values()} == {jnp.dtype(jnp.bfloat16)}
    reference = s.recipe._teacher_flat(("encoder/embeddings/norm/",))  # float32, from the source
    student = flat(s.params)
    for key in ("encoder/embeddings/norm/scale", "encoder/embeddings/norm/bias"):
        np.testing.assert_array_equal(student[key], reference[key])
    assert not any("embeddings/norm" in pattern for pattern, _ in s.stage("pkt_layer_1").rules)


def test_teacher_from_a_model_directory(tmp_path, pkt2):
    teacher_params = jax.tree.map(np.asarray, pkt2.teacher)
    io.save_model(tmp_path / "t", pkt2.recipe.teacher_config, ("mlm",), teacher_params)
    c = make_config()
    c.teacher.path = str(tmp_path / "t")
    s = Setup(c)
    loaded, saved = flat(s.teacher), flat(teacher_params)
    assert loaded.keys() == saved.keys()
    assert all(np.array_equal(loaded[k], saved[k]) for k in saved)
    np.testing.assert_array_equal(
        flat(s.params)["mlm/extra_output_weights"], saved["mlm/extra_output_weights"]
    )


def test_pkt_stages_freeze_exactly_and_the_boundary_switches_masks_and_losses(pkt2):
    s = pkt2
    stage1, stage2 = s.stage("pkt_layer_1"), s.stage("pkt_layer_2")
    start = flat(s.params)
    block0 = {k for k in start if k.startswith("encoder/layers_0/")}
    own_norm = {"encoder/embeddings/norm/scale", "encoder/embeddings/norm/bias"}
    state1, hist1 = s.train(stage1, s.params, 2)
    after1 = flat(state1.params)
    changed1 = {k for k in start if not np.array_equal(start[k], after1[k])}
    # Only block 1 (and the student's own embedding norm) may change; every
    # other parameter is bit-identical. Every matrix of block 1 does change
    # (a few norm scales may see gradients too small to move them).
    assert changed1 <= block0 | own_norm
    assert {k for k in block0 if start[k].ndim > 1} <= changed1
    assert set(hist1[0]) >= {"fmt_layer_1", "at_layer_1"} and "fmt_layer_2" not in hist1[0]
    # The objective is the official weighting: 100 / L * fmt + 1 / L * at, L = 2.
    m = hist1[0]
    mean = {k: float(v.total) / float(v.count) for k, v in m.items()}
    assert mean["objective"] == pytest.approx(50 * mean["fmt_layer_1"] + 0.5 * mean["at_layer_1"])

    state2, hist2 = s.train(stage2, state1.params, 2)
    after2 = flat(state2.params)
    changed2 = {k for k in after1 if not np.array_equal(after1[k], after2[k])}
    block1 = {k for k in start if k.startswith("encoder/layers_1/")}
    assert changed2 <= block1 and {k for k in block1 if start[k].ndim > 1} <= changed2
    assert set(hist2[0]) >= {"fmt_layer_2", "at_layer_2"} and "fmt_layer_1" not in hist2[0]
    # Adam's two moments exist for block 2's leaves only: frozen leaves carry no state.
    block1_size = sum(v.size for k, v in start.items() if k.startswith("encoder/layers_1/"))
    moments = sum(x.size for x in jax.tree.leaves(state2.opt_state) if np.ndim(x) > 0)
    assert moments == 2 * block1_size


def _norms(grads) -> dict[str, float]:
    """Sum of |gradient| per block ("encoder/layers_i"), embeddings and head."""
    out = {}
    for key, g in flat(grads).items():
        group = "/".join(key.split("/")[:2]) if key.startswith("encoder/") else key.split("/")[0]
        out[group] = out.get(group, 0.0) + float(np.sum(np.abs(g)))
    return out


def _nan_block(tree, name):
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), tree["encoder"][name])
    return {**tree, "encoder": {**tree["encoder"], name: nan}}


@pytest.mark.parametrize("mode", ["frozen", "reduced"])
def test_gradients_stop_below_the_trained_block_and_upper_blocks_are_not_run(mode):
    s = Setup(make_config(layers=3, lower_layers=mode))
    stage = s.stage("pkt_layer_2")
    grad_fn = jax.jit(
        jax.value_and_grad(lambda p, t: s.recipe.loss(stage, p, t, s.batch, jax.random.key(0))[0])
    )
    _, grads = grad_fn(s.params, s.teacher)
    norms = _norms(grads)
    embedding_norm = sum(
        float(np.sum(np.abs(g)))
        for k, g in flat(grads).items()
        if k.startswith("encoder/embeddings/norm/")
    )
    assert norms["encoder/layers_1"] > 0
    if mode == "frozen":
        # Exactly zero: stop_gradient at block 2's input.
        assert norms["encoder/layers_0"] == 0.0 and norms["encoder/embeddings"] == 0.0
    else:
        # Block 1 and the student's own embedding norm train at the reduced rate.
        assert norms["encoder/layers_0"] > 0 and embedding_norm > 0
    assert norms["mlm"] == 0.0 and norms["encoder/layers_2"] == 0.0
    # Upper blocks are not even run: NaN in block 3 of both models leaves everything finite.
    value, grads = grad_fn(_nan_block(s.params, "layers_2"), _nan_block(s.teacher, "layers_2"))
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "strategy, stage",
    [
        ("pkt", "pkt_layer_1"),
        ("pkt", "pd"),
        pytest.param("jkt", "jkt", marks=pytest.mark.slow),
        pytest.param("akt", "akt", marks=pytest.mark.slow),
    ],
)
def test_a_step_of_each_strategy_lowers_its_loss_on_a_fixed_batch(pkt2, strategy, stage):
    s = pkt2 if strategy == "pkt" else Setup(make_config(strategy))
    # The step reports the objective before its update: step 2's is after one update.
    # The batch is fixed and the student's dropout rates are 0, so these are comparable.
    _, hist = s.train(s.stage(stage), s.params, 2)
    before, after = (float(hist[i]["objective"].total) for i in (0, 1))
    assert np.isfinite(before) and after < before
    if stage in ("jkt", "akt"):
        assert {"fmt_layer_1", "fmt_layer_2", "at_layer_2"} <= set(hist[0])
    if stage in ("pd", "akt"):
        assert {"pd_mlm", "nsp"} <= set(hist[0])


def test_evaluate_reports_the_layers_trained_so_far_and_mlm_when_the_stack_is_full(pkt2):
    s = pkt2
    first = s.evaluate(s.stage("pkt_layer_1"), s.params)
    assert set(first) == {"fmt_layer_1", "at_layer_1"}
    last = s.evaluate(s.stage("pkt_layer_2"), s.params)
    assert {"fmt_layer_1", "fmt_layer_2", "mlm_accuracy", "teacher_mlm_accuracy"} <= set(last)
    pd = s.evaluate(s.stage("pd"), s.params)
    assert {"pd_mlm", "mlm", "nsp_accuracy", "fmt_layer_2", "at_layer_1"} <= set(pd)
    # Running one block or the whole stack gives the same layer-1 loss.
    assert float(first["fmt_layer_1"].mean()) == pytest.approx(float(pd["fmt_layer_1"].mean()))


# ------------------------------------------------- a student fitted to a stock BERT
WIDE = dict(hidden_size=384, num_layers=2, num_heads=12, intermediate_size=1536)


@pytest.fixture(scope="module")
def stock_bert(tmp_path_factory):
    """A random transformers `BertModel` (no MLM head) 384 wide, as a model directory.

    `initializer_range=0.1` peaks its attention maps (at 0.02 they are nearly
    uniform, leaving attention transfer nothing to learn in a few steps).
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mbert_jax.models import hf

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=500,
        hidden_size=384,
        num_hidden_layers=2,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=64,
        initializer_range=0.1,
    )
    model = transformers.BertModel(cfg).eval()
    d = tmp_path_factory.mktemp("stock_bert")
    model.save_pretrained(d / "hf")
    hf.hf_to_model_dir(d / "hf", d / "model")
    word = model.embeddings.word_embeddings.weight.detach().numpy().astype(np.float64)
    return d / "model", word


def fit_config(arg="runlocal,data=synthetic,student=fit", teacher_path="", **distill):
    c = common.mobilebert("pkt", arg)
    c.teacher.path = teacher_path
    c.teacher.overrides.update(WIDE)
    c.data.update(global_batch_size=4, max_seq_length=16, max_predictions_per_seq=3)
    c.data.vocab_size = 500
    c.student.overrides.attention_dropout = 0.0
    c.optimizer.learning_rate = 1e-3
    c.distill.update(**distill)
    return c


def rank_k(table, k):
    """The best rank-k approximation of a table, from the eigenvectors of its Gram matrix."""
    _, vectors = np.linalg.eigh(table.T @ table)  # ascending eigenvalues
    top = vectors[:, ::-1][:, :k]
    return table @ top @ top.T


def test_the_fit_student_follows_a_384_wide_12_head_teacher():
    # Full-size variant (E = 128), a random 384-wide teacher; nothing is drawn or compiled.
    recipe = recipes.build(fit_config("data=synthetic,student=fit"))
    s = recipe.student_config
    assert (s.num_layers, s.hidden_size, s.num_heads) == (2, 384, 12)
    # 384 / 4 = 96 = 8 x 12 heads; each of the 4 stacked FFNs 4 x 96 wide.
    assert (s.intra_bottleneck_size, s.intermediate_size, s.num_feedforward_networks) == (
        96,
        384,
        4,
    )
    assert (s.embed_size, s.embedding_transform, s.normalization, s.hidden_act) == (
        128, "trigram", "no_norm", "relu"
    )  # fmt: skip
    assert (s.vocab_size, s.max_position_embeddings, s.type_vocab_size) == (500, 512, 2)
    assert s.key_query_shared_bottleneck
    assert recipe.fit.embeddings == "factorized" and not recipe.fit.copy_head
    # Overrides win over the fitted values.
    c = fit_config("data=synthetic,student=fit")
    c.student.overrides.intra_bottleneck_size = 48
    c.student.overrides.num_feedforward_networks = 2
    s = recipes.build(c).student_config
    assert (s.intra_bottleneck_size, s.intermediate_size, s.num_feedforward_networks) == (
        48,
        192,
        2,
    )


@pytest.mark.parametrize(
    "hidden, heads, size",
    [(384, 12, 96), (512, 4, 128), (768, 12, 192), (64, 4, 16), (100, 12, 24)],
)
def test_bottleneck_is_the_multiple_of_the_heads_nearest_a_quarter(hidden, heads, size):
    from mbert_jax.distill.mobilebert.fit import bottleneck_size

    assert bottleneck_size(hidden, heads) == size


@pytest.mark.parametrize("rank", [32, 384])
def test_factorized_embeddings_start_as_the_rank_k_approximation_of_the_teachers(stock_bert, rank):
    path, word = stock_bert
    c = fit_config(teacher_path=str(path), pd_steps=0)
    c.student.overrides.embedding_size = rank
    s = Setup(c)
    teacher, student = flat(s.teacher), flat(s.params)
    assert student["encoder/embeddings/word_embeddings/embedding"].shape == (500, rank)
    # The student's embedding output (its NoNorm at init is the identity) against numpy.
    from mbert_jax.models.embeddings import Embeddings

    ids, types = np.asarray(s.batch["input_ids"]), np.asarray(s.batch["token_type_ids"])
    emb = {k.split("/", 2)[2]: v for k, v in student.items() if k.startswith("encoder/embeddings/")}
    out = Embeddings(s.recipe.student_config).apply(
        {"params": io.unflatten(emb)}, jnp.asarray(ids), jnp.asarray(types)
    )
    e = "encoder/embeddings/"
    expected = (
        rank_k(word, rank)[ids]
        + teacher[e + "position_embeddings/embedding"][None, : ids.shape[1]]
        + teacher[e + "token_type_embeddings/embedding"][types]
    )
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-5)
    if rank == 384:  # full rank: the teacher's own table, exactly
        np.testing.assert_allclose(rank_k(word, 384), word, atol=1e-5)
    # The MLM head keeps its initialization (its output matrix is tied to a narrower table).
    assert np.array_equal(student["mlm/transform/kernel"], flat(s.fresh)["mlm/transform/kernel"])


def test_pkt_from_a_stock_bert_transfers_layer_by_layer(stock_bert):
    steps = 15
    c = fit_config(teacher_path=str(stock_bert[0]), layer_steps=steps, pd_steps=0)
    s = Setup(c)
    assert s.recipe.teacher_heads == ()  # no MLM head in a BertModel: none is loaded
    assert [st.name for st in s.recipe.stages()] == ["pkt_layer_1", "pkt_layer_2"]
    params = s.params
    embeddings = {k for k in flat(params) if k.startswith("encoder/embeddings/")}
    for layer in (1, 2):
        state, hist = s.train(s.stage(f"pkt_layer_{layer}"), params, steps)
        # This stage's transfer losses drop (each step reports them before its
        # update, on the same batch, dropout off); only its own layer's are trained.
        mean = [{k: float(v.total) / float(v.count) for k, v in h.items()} for h in hist]
        assert mean[-1][f"fmt_layer_{layer}"] < 0.5 * mean[0][f"fmt_layer_{layer}"]
        assert mean[-1][f"at_layer_{layer}"] < 0.99 * mean[0][f"at_layer_{layer}"]
        assert not any(k.endswith(f"_layer_{3 - layer}") for k in mean[0])
        a, b = flat(params), flat(state.params)
        changed = {k for k in a if not np.array_equal(a[k], b[k])}
        block = {k for k in a if k.startswith(f"encoder/layers_{layer - 1}/")}
        # Lower layers are frozen; the factorized embeddings train with block 1 only.
        trained = block | (embeddings if layer == 1 else set())
        assert changed <= trained
        assert {k for k in trained if a[k].ndim > 1} <= changed
        params = state.params


def test_describe_prints_the_resolved_student_of_a_config(stock_bert, capsys):
    from mbert_jax import cli

    spec = f"{ROOT / 'configs/mobilebert_pkt.py'}:student=fit,teacher={stock_bert[0]}"
    assert cli.describe_main(["--config", spec]) == 0
    out = capsys.readouterr().out
    assert f"teacher (config.teacher.path={stock_bert[0]}): 2 layers, hidden 384" in out
    assert (
        "student (fitted to the teacher): 2 layers, hidden 384, intra-block 96, 12 heads, "
        "FFN 384 x4, E 128 (trigram), no_norm, relu, sharing none, vocab 500"
    ) in out


def test_pd_needs_the_teachers_mlm_head(stock_bert, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("jax.jit called while checking the config")

    monkeypatch.setattr(jax, "jit", refuse)
    for strategy, pd_steps in (("pkt", 5), ("akt", 0)):
        c = fit_config(teacher_path=str(stock_bert[0]), strategy=strategy, pd_steps=pd_steps)
        with pytest.raises(ValueError, match=r"config\.teacher\.path=.*no MLM head.*pd_steps"):
            recipes.build(c)
    recipe = recipes.build(fit_config(teacher_path=str(stock_bert[0]), pd_steps=0))
    assert recipe.fit.teacher_heads == () and recipe.stages()[-1].name == "pkt_layer_2"


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["MBERT_JAX_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("xla_cache"))
    e["XLA_FLAGS"] = FAST_COMPILE
    return e


def train_command(config_file, workdir, *extra):
    return [
        sys.executable, "-m", "mbert_jax", "train",
        "--config", f"configs/{config_file}:runlocal,data=synthetic,layers=2",
        "--workdir", str(workdir),
        "--config.data.global_batch_size=4", "--config.data.max_seq_length=16",
        "--config.data.max_predictions_per_seq=3",
        "--config.distill.layer_steps=2", "--config.distill.pd_steps=2",
        "--config.train.log_every=1", "--config.train.eval_every=100",
        *extra,
    ]  # fmt: skip


def train(config_file, workdir, env, *extra):
    cmd = train_command(config_file, workdir, *extra)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


@pytest.mark.slow
def test_runlocal_pkt_through_the_cli(tmp_path, env):
    # With the paper's optimizer (LAMB; runlocal configs use AdamW), data-parallel on 2
    # devices, through every stage boundary.
    two = {**env, "XLA_FLAGS": with_devices(2)}
    p = train("mobilebert_pkt.py", tmp_path, two, "--config.optimizer.name=lamb")
    assert "RANDOMLY INITIALIZED" in p.stderr and "over 2 cpu devices" in p.stderr
    rows = read_metrics(tmp_path, "train")
    assert all(np.isfinite(r["objective"]) and r["grad_norm"] > 0 for r in rows)
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["optimizer"]["name"] == "lamb"
    assert [r["stage"] for r in rows] == ["pkt_layer_1"] * 2 + ["pkt_layer_2"] * 2 + ["pd"] * 2
    assert all("fmt_layer_1" in r and "fmt_layer_2" not in r for r in rows[:2])
    assert all("fmt_layer_2" in r and "fmt_layer_1" not in r for r in rows[2:4])
    assert all("pd_mlm" in r and "fmt_layer_2" not in r for r in rows[4:])
    (final,) = read_metrics(tmp_path, "eval")
    assert {"fmt_layer_1", "fmt_layer_2", "mlm_accuracy", "pd_mlm"} <= set(final)
    config, heads, params = io.load_model(tmp_path / "model")
    assert heads == ("mlm", "nsp") and config.num_layers == 2 and "nsp" in params
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 6


@pytest.mark.slow
def test_runlocal_pkt_of_a_fit_student_through_the_cli(tmp_path, env, stock_bert):
    p = train(
        "mobilebert_pkt.py",
        tmp_path,
        env,
        "--config.student.fit=True",
        f"--config.teacher.path={stock_bert[0]}",
        "--config.data.vocab_size=500",
        "--config.distill.pd_steps=0",
    )
    assert "student fitted to the teacher" in p.stderr and "factorized" in p.stderr
    rows = read_metrics(tmp_path, "train")
    assert [r["stage"] for r in rows] == ["pkt_layer_1"] * 2 + ["pkt_layer_2"] * 2
    config, _, _ = io.load_model(tmp_path / "model")
    assert (config.hidden_size, config.intra_bottleneck_size, config.num_heads) == (384, 96, 12)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_file, stages", [("mobilebert_jkt.py", 2), ("mobilebert_akt.py", 1)]
)
def test_runlocal_jkt_and_akt_through_the_cli(tmp_path, env, config_file, stages):
    train(config_file, tmp_path, env, "--config.distill.transfer_steps=2")
    rows = read_metrics(tmp_path, "train")
    assert len({r["stage"] for r in rows}) == stages
    assert rows[-1]["step"] == 4
    assert io.is_model_dir(tmp_path / "model")


def committed_steps(workdir) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


PKT4 = ("--config.distill.layer_steps=4", "--config.distill.pd_steps=4",
        "--config.train.checkpoint_every=1")  # fmt: skip


@pytest.fixture(scope="module")
def pkt4_reference(tmp_path_factory, env):
    """An uninterrupted PKT run: 4 steps of each of pkt_layer_1, pkt_layer_2 and pd."""
    workdir = tmp_path_factory.mktemp("pkt4_reference")
    train("mobilebert_pkt.py", workdir, env, *PKT4)
    return {r["step"]: r for r in read_metrics(workdir, "train")}


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [4, 6], ids=["at_the_stage_boundary", "inside_a_stage"])
def test_a_pkt_run_killed_and_run_again_gives_the_uninterrupted_losses(
    tmp_path, env, pkt4_reference, kill_after
):
    """SIGKILL (nothing flushed, a save possibly half-written) once checkpoint `kill_after`
    is committed: step 4 ends pkt_layer_1, step 6 is inside pkt_layer_2. The same command
    again resumes from the newest complete checkpoint and logs the same losses."""
    import signal
    import time

    cmd = train_command("mobilebert_pkt.py", tmp_path, *PKT4)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while kill_after not in committed_steps(tmp_path) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint committed in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    last = committed_steps(tmp_path)[-1]
    assert kill_after <= last < 12
    p = train("mobilebert_pkt.py", tmp_path, env, *PKT4)
    resumed_from = committed_steps(tmp_path)  # all steps now; the log names the one used
    assert f"resuming from {tmp_path.absolute()}/checkpoints/" in p.stderr, p.stderr[-2000:]
    assert resumed_from[-1] == 12
    rows = read_metrics(tmp_path, "train")
    assert [r["step"] for r in rows] == list(range(1, 13))  # each step once
    for r in rows:
        want = pkt4_reference[r["step"]]
        assert r["stage"] == want["stage"]
        assert r["objective"] == pytest.approx(want["objective"], rel=1e-6), r["step"]
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 12
