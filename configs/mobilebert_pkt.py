"""MobileBERT progressive knowledge transfer (PKT) from IB-BERT, then pre-training distillation.

Step 2 of the MobileBERT recipe (step 1: configs/pretrain_ibbert.py). The
paper's setting (Sun et al., 2020): 24 stages of 10k steps, stage l training
block l on its feature-map + attention transfer loss with the lower blocks
frozen, then 500k PD steps; batch 2048 x 512 tokens, LAMB at 1.5e-3, gradient
clipping 1.0. On a TPU/GPU pod (FSDP over 16 devices per data group):

    mbert-jax train --config configs/mobilebert_pkt.py --workdir $BUCKET/mobilebert_pkt \
        --config.teacher.path=$BUCKET/ibbert/model \
        --config.data.source=hf --config.data.hf_disk_path=/data/wiki_books \
        --config.mesh.fsdp=16

The data takes the teacher's vocab.txt; `--config.teacher.dtype=bfloat16`
holds and runs the teacher in bf16. Runtime (estimate, not measured here): a PD
step costs about 0.8 GFLOP per token (teacher forward 0.63 + student training
0.14, `mbert-jax describe`), a PKT step half that on average (stage l runs l of
24 blocks), so about 5e20 FLOPs in all: a day on a TPU v3-256 (the paper's
machine) at 40% utilization, four fifths of it PD. Expected (paper): the
student's MLM accuracy close to the teacher's after PD, and GLUE 77.7 /
SQuAD v1.1 dev F1 90.0 after fine-tuning.
Options (see `configs/common.py`): `student=tiny`
(MobileBERT-TINY), `student=fit` (a MobileBERT shaped after a teacher that is
not an IB-BERT, e.g. all-MiniLM-L6-v2; docs/configs.md), `lower=reduced|same`,
`official` (the official TF1 code's choices), `teacher=PATH`, `data=synthetic`,
`layers=N`.

CPU smoke run (micro models, 4 stages x 40 steps + 200 PD steps, batch 16 x
64): about 3 minutes on 2 shared cores (1.5 CPU-minutes, half of it compiling
one train and one eval step per stage):

    mbert-jax train --config configs/pretrain_ibbert.py:runlocal --workdir runs/ibbert_local
    mbert-jax train --config configs/mobilebert_pkt.py:runlocal,teacher=runs/ibbert_local/model \
        --workdir runs/mobilebert_pkt_local

Expected at runlocal size (measured): each stage drives its layer's held-out
`fmt_layer_l` from about 0.1 to under 0.01 and `at_layer_l` down 2-3x
(layer 3: 0.09 -> 0.03), leaving the layers below untouched. The periodic
evaluations read 4 held-out batches; the final one reads the whole held-out
split. After PD, the student (which starts with the teacher's copied MLM
head) has a final held-out `mlm_accuracy` of 0.0789 ± 0.0003 over 3 seeds.
That is above the 300-step runlocal teacher's `teacher_mlm_accuracy` of
0.0718, on the same batches and masks. Meanwhile the feature maps drift
(`fmt_layer_l` 0.25-0.39: PD does not constrain them). Without `teacher=`
the teacher is random (a warning says so).

The ablation `sweep` compares PKT, JKT and AKT, and PKT with reduced-rate
and same-rate lower blocks. `--dry-run` prints the train and fine-tuning
commands. With 3 seeds, each student is fine-tuned on `stdlib`. This takes
25 minutes on 2 shared cores; the results are in BENCHMARKS.md:

    mbert-jax sweep --config configs/mobilebert_pkt.py:runlocal,teacher=runs/ibbert_local/model \
        --workdir runs/mobilebert_ablation --seeds 3 --finetune configs/finetune.py:runlocal

From a stock BERT (`student=fit`; a teacher without an MLM head needs
`--config.distill.pd_steps=0`), e.g. all-MiniLM-L6-v2 converted with
`mbert-jax convert from-hf`: 6 stages x 40 steps, about 8 minutes on 2 shared
cores; stage 1 takes `fmt_layer_1` from 0.89 to 0.46 with the factorized
embeddings training beside block 1, each later stage its layer from about 0.5
to 0.40-0.46 (measured):

    mbert-jax train \
        --config configs/mobilebert_pkt.py:runlocal,student=fit,teacher=runs/minilm/model \
        --workdir runs/mobilebert_fit_local --config.distill.pd_steps=0

Paper: PKT > JKT > AKT after fine-tuning at full size. At runlocal size,
with 3 seeds, the means keep that order: fine-tuned `stdlib` accuracy is
0.345, 0.320 and 0.277. Only AKT is outside two standard errors of PKT.
"""

from configs import common


def get_config(arg=None):
    return common.mobilebert("pkt", arg)


# With --finetune, the fine-tuning config's metric (finetune_eval_accuracy) leads.
sweep_metrics = ("eval_mlm_accuracy",)  # the student's, after PD


def sweep(add):
    """PKT vs JKT vs AKT (the paper's Table), and PKT's lower-layer modes."""
    common.mobilebert_ablation(add)
