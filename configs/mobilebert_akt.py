"""MobileBERT auxiliary knowledge transfer (AKT): one loss, all layer losses plus PD.

The paper's weakest strategy: a single stage (the transfer budget, 24 x 10k,
plus 500k PD steps) whose loss adds every layer's feature-map + attention
transfer to the PD loss, over all parameters. Full size on a pod:

    mbert-jax train --config configs/mobilebert_akt.py --workdir $BUCKET/mobilebert_akt \
        --config.teacher.path=$BUCKET/ibbert/model \
        --config.data.source=hf --config.data.hf_disk_path=/data/wiki_books \
        --config.mesh.fsdp=16

Expected (paper): below JKT and PKT after fine-tuning.

CPU smoke run (micro models, one stage of 360 steps): about 1.5 minutes on
2 shared cores (1 CPU-minute):

    mbert-jax train --config configs/mobilebert_akt.py:runlocal,teacher=runs/ibbert_local/model \
        --workdir runs/mobilebert_akt_local

Expected at runlocal size (measured): `pd_mlm` falls (6.13 -> 6.09 held out)
together with every `fmt_layer_l` (to under 0.001) and `at_layer_l`; final
`mlm_accuracy` 0.062 (teacher 0.057). Options and the ablation sweep: see
configs/mobilebert_pkt.py.
"""

from configs import common


def get_config(arg=None):
    return common.mobilebert("akt", arg)
