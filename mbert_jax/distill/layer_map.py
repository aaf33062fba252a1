"""Which teacher layer each student layer learns from.

Indexing: layer 0 is the embedding output, layer i (1 <= i <= L) is the
output of block i (`EncoderOutput.embedding_output` and
`hidden_states[i - 1]`); attention maps exist for layers 1..L. A map is a
tuple `m` with `m[i]` the teacher layer of student layer i, for i = 0..L_S.

Kinds (config `layer_map`):
- "uniform": TinyBERT's g(m) = k * m with k = L_T / L_S (the embedding maps
  to the embedding; the official code's attention index i*k + k - 1 and
  hidden index i*k, 0-based, are the same map).
- "last": the student's blocks take the teacher's last L_S blocks.
- "identity": same depth, layer i to layer i (MobileBERT).
- an explicit list of L_S teacher layers for blocks 1..L_S (the embedding
  maps to the embedding), e.g. [2, 4, 6, 8, 10, 12]; as a string (the form
  a command line gives: `--config.distill.layer_map=2,4,6,8,10,12`, with or
  without brackets) it is parsed.
Width mismatches are handled by projections in the strategy, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

KINDS = ("uniform", "last", "identity")


class LayerMapError(ValueError):
    """A layer map that cannot work for these depths; the message says why and what to do."""


def parse_list(spec: str) -> list[int]:
    """'2,4,6', '[2, 4, 6]' or '2 4 6' -> [2, 4, 6]; anything else is a `LayerMapError`."""
    body = spec.strip().removeprefix("[").removesuffix("]").replace(",", " ").split()
    try:
        layers = [int(x) for x in body]
    except ValueError:
        layers = []
    if not layers:
        raise LayerMapError(
            f"layer_map={spec!r}: one of {', '.join(KINDS)} or teacher layers, one per student "
            "block, e.g. --config.distill.layer_map=3,6,9,12"
        )
    return layers


def layer_map(
    spec: str | Sequence[int], student_layers: int, teacher_layers: int
) -> tuple[int, ...]:
    """The teacher layer of every student layer 0..L_S (see the module docstring).

    Raises:
      LayerMapError: for an impossible map (a student deeper than its teacher
        without an explicit map, a non-integer uniform ratio, indices out of range).
    """
    s, t = int(student_layers), int(teacher_layers)
    if s < 1 or t < 1:
        raise LayerMapError(f"layer counts must be positive, got student {s}, teacher {t}")
    if isinstance(spec, str) and spec not in KINDS:
        spec = parse_list(spec)
    if isinstance(spec, str):
        if spec == "identity":
            if s != t:
                raise LayerMapError(
                    f"layer_map='identity' needs equal depths, got student {s} and teacher {t} "
                    "layers; use 'uniform', 'last' or an explicit list"
                )
            return tuple(range(s + 1))
        if s > t:
            raise LayerMapError(
                f"the student has {s} layers but the teacher only {t}: layer_map={spec!r} cannot "
                "give each student layer its own teacher layer; give an explicit list "
                "(teacher layers may repeat) or a deeper teacher"
            )
        if spec == "uniform":
            if t % s:
                raise LayerMapError(
                    f"layer_map='uniform' needs the teacher depth ({t}) to be a multiple of the "
                    f"student's ({s}); use 'last' or an explicit list"
                )
            k = t // s
            return tuple(k * i for i in range(s + 1))
        return (0, *range(t - s + 1, t + 1))  # "last"
    layers = [int(x) for x in spec]
    if len(layers) != s:
        raise LayerMapError(
            f"an explicit layer_map needs one teacher layer per student block ({s}), "
            f"got {len(layers)}: {layers}"
        )
    bad = [x for x in layers if not 1 <= x <= t]
    if bad:
        raise LayerMapError(
            f"layer_map {layers}: teacher layers are 1..{t} (0 is the embedding), got {bad}"
        )
    return (0, *layers)


def all_hidden(output) -> tuple:
    """(embedding output, block 1 output, ..., block L output) of an `EncoderOutput`."""
    return (output.embedding_output, *output.hidden_states)


def from_config(spec, student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    """`layer_map` of `config.distill.layer_map` (a kind, a list, or a list as a string);
    an impossible map is a `ValueError` that names the config field."""
    if not isinstance(spec, str):
        spec = tuple(spec)
    try:
        return layer_map(spec, student_layers, teacher_layers)
    except LayerMapError as e:
        raise LayerMapError(f"config.distill.layer_map={spec!r}: {e}") from None


def check_heads(student, teacher, mapping: Sequence[int], fix: str) -> None:
    """Attention maps are compared head by head: each student block needs as many heads as
    the teacher block it learns from (per block: a pruned model's `ModelConfig.layer_heads`
    gives blocks their own counts). A `ValueError` naming the blocks, ending with `fix`."""
    for m in range(1, len(mapping)):
        if mapping[m] < 1:
            continue  # learns from the embedding output: no map
        sb, tb = m - 1, mapping[m] - 1
        sh, th = student.heads_at(sb), teacher.heads_at(tb)
        if sh == th:
            continue
        if student.layer_heads is None and teacher.layer_heads is None:
            which = f"the student has {sh} heads and the teacher {th}"
        else:
            which = (
                f"student block {sb} has {sh} heads and teacher block {tb}, which it learns "
                f"from, has {th} (ModelConfig.layer_heads: a pruned model's blocks keep their "
                "own head counts)"
            )
        raise ValueError(f"the attention loss compares maps head by head: {which}; {fix}")
