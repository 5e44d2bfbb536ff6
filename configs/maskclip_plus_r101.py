r"""MaskCLIP+ (transductive zero-shot): a DeepLab student on an ImageNet ResNet-101-V1c-D8, trained
on the seen classes' ground truth and training-free MaskCLIP's pseudo-labels for the unseen ones,
then self-training. Every value is MaskCLIP's (github.com/chongzhou96/MaskCLIP, paths below).

  python -m ovs_jax.convert resnet --src=resnet101_v1c-e67eebb6.pth --out=r101_v1c/   # open-mmlab://resnet101_v1c
  python -m ovs_jax.train --config=configs/maskclip_plus_r101.py:voc --workdir=runs/mcp_voc \
      --config.clip.weights=/path/to/RN50 --config.model.backbone_weights=r101_v1c/
  python -m ovs_jax.train --config=configs/maskclip_plus_r101.py ...            # COCO-Stuff 156/15
  python -m ovs_jax.train --config=configs/maskclip_plus_r101.py:context ...    # PASCAL Context-59 49/10
  python -m ovs_jax.train --config=configs/maskclip_plus_r101.py:demo --workdir=runs/mcp_demo   # offline

Sources (MaskCLIP repo, configs/): zero_shot/maskclip_plus_r50_deeplabv2_r101-d8_512x512_20k_voc12aug_20.py
(VOC), ..._80k_coco-stuff164k.py (COCO-Stuff), ..._deeplabv3plus_r101-d8_480x480_40k_pascal_context.py
(PC); _base_/models/maskclip_plus_r50.py; _base_/schedules/schedule_{20k,40k,80k}.py.
The teacher CLIP of those configs is RN50 (`clip_cfg` ResNetClip, `text_channels=1024`); any CLIP
works here (its text width sets the student's decoder width, `channels=1024` in the configs).
"""
import ml_collections

from ovs_jax.config_utils import parse_variants
from ovs_jax.methods.maskclip_plus import FROZEN

# dataset -> (schedule steps, teacher window end, head, head kwargs, img_scale, crop, SGD lr)
RECIPES = {
    # voc12aug_20.py:13-14 start_clip_guided=(1, 1999), start_self_train=(2000, -1); schedule_20k
    "voc_20": (20000, 1999, "deeplabv2", dict(dilations=(6, 12, 18, 24)), (2048, 512), 512, 0.01),
    # coco-stuff164k.py:15-16 (1, 7999) / (8000, -1); schedule_80k
    "coco_stuff_171": (80000, 7999, "deeplabv2", dict(dilations=(6, 12, 18, 24)), (2048, 512), 512, 0.01),
    # pascal_context.py:15-24 (1, 3999) / (4000, -1), DepthwiseSeparableASPPHead; :31-32 scale 520,
    # crop 480; :51 SGD lr 0.004; schedule_40k
    "pc_59": (40000, 3999, "deeplabv3plus", dict(dilations=(1, 12, 24, 36), c1_channels=48),
              (520, 520), 480, 0.004),
}
DATASETS = {"voc": "voc_20", "context": "pc_59"}


def get_config(arg: str = ""):
  variants = parse_variants(arg, {"demo", "voc", "context"}, "configs/maskclip_plus_r101.py")
  dataset = next((DATASETS[v] for v in variants if v in DATASETS), "coco_stuff_171")
  steps, teacher_end, head, head_kwargs, img_scale, crop, lr = RECIPES[dataset]
  c = ml_collections.ConfigDict()
  c.method = "maskclip_plus"
  c.seed = 0
  # The teacher's CLIP; MaskCLIP's 85 templates give the text embeddings (prompt_engineering.py).
  c.clip = dict(weights="", arch="RN50", hidden_act="", templates="maskclip")
  c.model = dict(backbone="resnet101_v1c",  # maskclip_plus_r50.py:6-16 with depth=101
                 backbone_weights="",       # `convert resnet` output of open-mmlab://resnet101_v1c
                 head=head, head_kwargs=head_kwargs, dtype="float32", attention="auto")
  # MaskCLIP's zero-shot configs leave ks_thresh / pd_thresh at 0 (maskclip_plus_head.py:22).
  c.teacher = dict(pd_thresh=0.0, ks_thresh=0.0)
  # Teacher pseudo-labels for steps [1, end], self-training after (no overlap); -1: never / open.
  c.schedule = dict(start_teacher=1, end_teacher=teacher_end, start_self_train=teacher_end + 1,
                    end_self_train=-1)
  # configs/maskclip_plus/zero_shot/*.py:24-35: Resize(img_scale, ratio (0.5, 2.0)),
  # RandomCrop(crop, cat_max_ratio=0.75), flip, PhotoMetricDistortion, pad to crop; batch 4 per
  # GPU (samples_per_gpu=4; the paper's runs used 4 GPUs: 16).
  # One name per class (prompt_engineering.py's class lists), FC-CLIP's multi-name files optional.
  c.data = dict(train=dataset, unseen="zero_shot", transductive=True, class_synonyms=False,
                train_max_images=0, root="",
                img_scale=img_scale, ratio_range=(0.5, 2.0), crop_size=crop, cat_max_ratio=0.75,
                photometric=True, num_masks=8, worker_count=2, skip_bad=False)
  # mmseg test: whole image, Resize(img_scale, keep_ratio) (short side 512; PC: long side 520).
  short = min(img_scale)
  c.evals = dict(
      zero_shot=dict(type="zero_shot", dataset=dataset, split="val", protocol="zero_shot",
                     setting="transductive", baseline="maskclip", every=steps // 10, max_images=0,
                     short_side=short, max_size=max(img_scale),
                     batch_size=0, miou_convention="maft_plus"),
      pictures=dict(type="predictions", dataset=dataset, split="val", every=0, num=4,
                    short_side=short, max_size=2048))
  # _base_/schedules/schedule_*.py: SGD(lr 0.01, momentum 0.9, weight_decay 5e-4), poly 0.9 to
  # min_lr 1e-4, by iteration, no warmup, no clipping.
  c.optim = dict(optimizer="sgd", lr=lr, momentum=0.9, weight_decay=5e-4 if dataset != "pc_59" else 1e-4,
                 lr_multipliers=[], schedule="poly", poly_power=0.9, min_lr=1e-4, warmup_steps=0,
                 decay_steps=(), decay_factor=0.1, clip_norm=0.0, b1=0.9, b2=0.999, eps=1e-8,
                 no_decay=r"$^", no_decay_1d=False)
  c.frozen = list(FROZEN)
  c.train = dict(batch_size=16, steps=steps, grad_accum=1, log_every=50, ckpt_every=steps // 10,
                 keep_checkpoints=3)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding = dict(rules=())

  if "demo" in variants:
    # OURS: the demo CLIP (pre-trained on every demo class) as the teacher, a tiny student from
    # random weights (no ImageNet weights offline), 128-px crops, a short run with Adam (SGD from
    # scratch on a tiny net is slow to start), switch-over at a third of the run.
    c.clip.update(weights="demo", arch="tiny")
    c.model.update(backbone="tiny", head="deeplabv2", head_kwargs=dict(dilations=(1, 2, 3, 4)))
    c.data.update(train="demo", img_scale=(512, 128), crop_size=128, worker_count=0)
    c.schedule.update(end_teacher=300, start_self_train=301)
    c.evals.zero_shot.update(dataset="demo", every=900, max_images=64, short_side=128, max_size=512,
                             batch_size=8)
    c.evals.pictures.update(dataset="demo", short_side=128)
    c.optim.update(optimizer="adamw", lr=2e-3, weight_decay=1e-4, min_lr=0.0, warmup_steps=20)
    c.train.update(batch_size=8, steps=900, log_every=50, ckpt_every=900)
  return c
