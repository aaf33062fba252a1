"""Structured pruning of a fine-tuned model: heads, FFN neurons and blocks, then recovery.

From a fine-tuned model directory (`config.init_from`, WORKDIR/model of
configs/finetune.py; any task kind fine-tuning has: classification,
regression, tagging, SQuAD), head and FFN-neuron importance on the task's
training batches (Michel et al. 2019) chooses what is removed: `heads=F` the fraction
of heads (ranked globally, each block keeping one), `neurons=F` the fraction
of each block's FFN neurons, `--config.prune.layers` whole blocks
(`every_other` or a list such as `1,3`) or `--config.prune.drop_layers` (a
fraction or count of blocks, those whose skipping costs least);
`--config.prune.params_budget` (with heads=0,neurons=0) a parameter budget
instead of fractions, or `--config.prune.latency_budget=0.5` a latency budget
(half the unpruned model's float TFLite latency on this machine, predicted by
a latency model measured first; `--config.prune.latency_model=FILE` keeps it
for later runs). The pruned, smaller dense model then recovers by
distilling the unpruned model's logits (KL at `prune.temperature`, plus
`prune.ce_weight` x the hard-label loss and `prune.hidden_weight` x the
per-block hidden-state MSE) for `train.steps` steps;
`--config.prune.iterations=N` does it in N prune-then-recover steps in one
run. WORKDIR/model is the pruned, recovered model (mbert_jax/prune/recipe.py,
docs/pruning.md).

Full size (a BERT-base fine-tuned on MRPC, half its heads and FFN neurons):

    mbert-jax train --config configs/prune.py:task=mrpc,heads=0.5,neurons=0.5 \
        --workdir $BUCKET/bert_mrpc_pruned --config.init_from=$BUCKET/bert_mrpc/model \
        --config.data.data_dir=/data/glue/MRPC

CPU smoke run on the embedded `stdlib` task: fine-tune the micro BERT, then
prune it (about a minute each):

    mbert-jax train --config configs/finetune.py:runlocal --workdir runs/bert_stdlib \
        --config.data.vocab_file=runs/ibbert_local/model/vocab.txt
    mbert-jax train --config configs/prune.py:runlocal --workdir runs/bert_stdlib_pruned \
        --config.init_from=runs/bert_stdlib/model

`--config.train.steps=0` evaluates the pruned model before recovery; with
`heads=0,neurons=0` that is the unpruned model.

Measured at runlocal size (the micro BERT of the first command: 6 blocks x 4
heads, FFN 256, fine-tuned 300 steps; the default heads=0.5, neurons=0.5; dev
split of 372 examples, one seed, CPU):

| model | dev accuracy | KL to the unpruned | parameters |
|---|---|---|---|
| unpruned (`heads=0,neurons=0 --config.train.steps=0`) | 0.328 | 0 | 443,974 |
| pruned, before recovery (`--config.train.steps=0`) | 0.325 | 0.071 | 295,174 (66.5%) |
| pruned, after 200 recovery steps (default) | 0.323 | 0.0045 | 295,174 |
| after recovery with CE (see below) | 0.366 | 0.040 | 295,174 |

CE: `--config.prune.ce_weight=1 --config.optimizer.learning_rate=5e-4`.
Each block keeps 2 heads and 128 neurons. The micro teacher is weak (chance
is 0.167) and the dev split small (one example is 0.27 points): these are a
smoke test of the chain, not a benchmark.

Options: `runlocal`, `task=NAME`, `heads=F` (default 0.5), `neurons=F`
(default 0.5), `sweep=sparsity|allocation` (which sweep).

Sweeps (`mbert-jax sweep`; each run reports eval_accuracy, eval_kd and eval_params):
- `sweep=sparsity` (default): 0.25 / 0.5 / 0.75 of heads and neurons together;
- `sweep=allocation`: a latency budget of half the unpruned model's latency,
  spread by each `prune.budget_allocation` (fisher, uniform, greedy); give
  `--config.prune.latency_model=FILE` so that it is measured once.
"""

from configs import common
from mbert_jax.data import config as data_config
from mbert_jax.train.config import base_config, parse_arg


def get_config(arg=None):
    arg = _args(arg)
    task = arg.task or ("stdlib" if arg.runlocal else "mrpc")
    config = base_config("prune")
    config.init_from = ""
    config.prune = dict(
        heads=float(arg.heads),  # fraction of heads removed, global ranking
        neurons=float(arg.neurons),  # fraction of each block's FFN neurons removed
        layers="",  # blocks dropped: "", "every_other", or a list ("1,3")
        drop_layers=0.0,  # or: blocks dropped by skip importance, a fraction in [0, 1) or a count
        params_budget=0.0,  # or (with heads=neurons=0): fraction in (0, 1] or count of parameters
        # or (with heads=neurons=0): a fraction in (0, 1) of the unpruned model's TFLite latency,
        # under a latency model measured on this machine (mbert_jax/prune/latency.py)
        latency_budget=0.0,
        latency_model="",  # a JSON file: read when it fits this model, else measured and written
        latency_seq_len=0,  # the length it is timed at (0: data.max_seq_length)
        latency_threads=1,
        latency_runs=20,  # timed runs of each of the six structures
        # how a budget is spread: "uniform" (one fraction of heads and neurons alike, the
        # smallest that fits), "fisher" (Fisher importance, the head/neuron split that keeps
        # the most of it: Kwon et al. 2022) or "greedy" (raw score per parameter / ms saved;
        # it cut all but one head per block on the real teacher: BENCHMARKS.md)
        budget_allocation="uniform",
        iterations=1,  # N > 1: N steps of prune-then-recover, train.steps / N each
        hidden_weight=0.0,  # per-block hidden-state MSE against the unpruned model
        importance_batches=32,  # training batches the importance is averaged over
        kd="kl",  # KL(teacher || student); or "soft_cross_entropy" (the same gradients)
        temperature=2.0,
        kd_weight=1.0,
        ce_weight=0.0,  # hard-label cross-entropy weight
    )
    config.data = data_config.task_data_defaults(task)
    config.data.global_batch_size = 32
    config.data.max_seq_length = 128

    config.optimizer.learning_rate = 2e-5
    config.optimizer.schedule.warmup_fraction = 0.1
    config.train.steps = 3_000
    config.train.log_every = 50
    config.train.eval_every = 1_000
    config.train.eval_steps = 0  # the whole dev split
    config.train.checkpoint_every = 1_000

    if arg.runlocal:
        common.runlocal(
            config,
            steps=200,
            learning_rate=1e-4,
            log_every=25,
            eval_every=200,
            checkpoint_every=200,
        )
        config.prune.importance_batches = 8
    return config


def _args(arg):
    return parse_arg(arg, runlocal=False, task="", heads=0.5, neurons=0.5, sweep="sparsity")


sweep_metrics = ("eval_accuracy", "eval_kd", "eval_params")  # the pruned, recovered model's
SWEEPS = ("sparsity", "allocation")


def sweep(add, arg=None):
    """`sweep=sparsity`: the same fraction of heads and of FFN neurons removed, 0.25 / 0.5 /
    0.75. `sweep=allocation`: a latency budget of 0.5 spread by each allocation."""
    which = _args(arg).sweep
    if which not in SWEEPS:
        raise ValueError(f"configs/prune.py:sweep={which}: one of {', '.join(SWEEPS)}")
    if which == "sparsity":
        for sparsity in (0.25, 0.5, 0.75):
            add(
                name=f"sparsity_{sparsity}",
                **{"prune.heads": sparsity, "prune.neurons": sparsity},
            )
        return
    for allocation in ("fisher", "uniform", "greedy"):
        add(
            name=f"latency_0.5_{allocation}",
            **{
                "prune.heads": 0.0,
                "prune.neurons": 0.0,
                "prune.latency_budget": 0.5,
                "prune.budget_allocation": allocation,
            },
        )
