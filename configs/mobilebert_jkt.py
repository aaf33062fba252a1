"""MobileBERT joint knowledge transfer (JKT): all layer losses in one stage, then PD.

The paper's baseline for PKT: one transfer stage training every block on the
sum of all layers' feature-map + attention losses (by default as many steps
as PKT's stages together, 24 x 10k), then 500k PD steps. Full size on a pod:

    mbert-jax train --config configs/mobilebert_jkt.py --workdir $BUCKET/mobilebert_jkt \
        --config.teacher.path=$BUCKET/ibbert/model \
        --config.data.source=hf --config.data.hf_disk_path=/data/wiki_books \
        --config.mesh.fsdp=16

About as long as PKT on the same pod (each JKT step runs every block of both
models). Expected (paper): slightly below PKT after fine-tuning.

CPU smoke run (micro models, 160 transfer + 200 PD steps): about 2 minutes
on 2 shared cores (1 CPU-minute):

    mbert-jax train --config configs/mobilebert_jkt.py:runlocal,teacher=runs/ibbert_local/model \
        --workdir runs/mobilebert_jkt_local

Expected at runlocal size (measured): after the transfer stage every
held-out `fmt_layer_l` is about 0.002 and `at_layer_l` 0.003-0.017; the
student's `mlm_accuracy` with the copied head is 0.064 (teacher 0.057) and
0.065 after PD. Options and the ablation sweep: see configs/mobilebert_pkt.py.
"""

from configs import common


def get_config(arg=None):
    return common.mobilebert("jkt", arg)
