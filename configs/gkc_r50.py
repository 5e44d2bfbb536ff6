r"""GKC with a CLIP RN50 student: the paper's recipe (Han et al., ICCV 2023; docs/gkc.md).

  python -m ovs_jax.train --config=configs/gkc_r50.py --workdir=runs/gkc_r50 \
      --config.clip.weights=/path/to/RN50.pt-converted --config.clip.arch=RN50
  python -m ovs_jax.train --config=configs/gkc_r50.py:demo --workdir=runs/gkc_r50_demo

Recipe: COCO-Panoptic-133, flip + resize-scale 0.8-1.2 x 512 + fixed 512 crop, batch 112, 50k
steps, AdamW 3e-4, weight decay 0.05, backbone x0.1, step decay x0.1 at 40k and 45k, gradient
clip 0.01, bfloat16 compute; losses CE 2 / BCE 5 / dice 5 (void 0.1), region dropout 0.5,
synonym CE 10 (one classifier per image; needs --config.loss.synonym_filter, see docs/gkc.md),
text-guided KD 10 (<= 200 crops per device, cut from the un-augmented image), caption grounding 10
on every set (one caption's POS-tagged nouns, <= 25 matched queries); ImageNet pixel statistics;
test: one name per class at short side 800. RN101: --config.clip.arch=RN101.
`:demo`: the demo data on the tiny demo ResNet CLIP (`resnet_tiny`): about 3 min on 2 CPU cores,
demo-val mIoU 73.1 against MaskCLIP's 49.1 with the same CLIP (docs/gkc.md).
"""
import ml_collections

from ovs_jax.config_utils import parse_variants, recipe_module
from ovs_jax.methods.gkc import BACKBONE, FROZEN


def base_config():
  c = ml_collections.ConfigDict()
  c.method = "gkc"
  c.seed = 0
  c.clip = dict(weights="", arch="RN50", hidden_act="", templates="vild")
  # pyramid_blocks: the ViT blocks (1-based) feeding res2..res5; unused by a ResNet. attention:
  # "auto", "xla", "chunked", "cudnn", "pallas" (ovs_jax/ops/attention.py).
  c.model = dict(num_queries=100, hidden_dim=256, enc_layers=6, enc_ffn_dim=1024, dec_layers=9,
                 dec_ffn_dim=2048, num_heads=8, deform_points=4, pyramid_blocks=(4, 6, 8, 12),
                 dtype="bfloat16", scan=False, remat=False, attention="auto",
                 pixel_stats="imagenet", test_names="first", pyramid="release", drop_path=0.1)
  # ViT student only: pyramid "release" (clip_models.py:526-545) or "vitdet"; drop_path: stochastic
  # depth (VIT.DROP_PATH_RATE, config.py:168; needs scan=False, remat=False).
  # pixel_stats: the release's Base-COCO yaml (ovs_jax/methods/gkc_pixels.py); test_names: "first"
  # = one name per class (the release's VOCA_MULTINAME=False), "all" = max over a class's names.
  # Distillation crops come from an un-augmented kd_canvas² view of each image (640: every COCO
  # image unscaled), at most kd_max_crops per device forward (the release's KD.MAX_LIST_LEN = 200,
  # a random subset of the device's images' segments), resized to kd_crop_size (0: the teacher's
  # input size). images_per_device: 0 = the batch over the devices (the release's per-GPU batch,
  # 112 / 8 = 14), the group within which the synonym classifiers are padded, crops chosen and
  # captions contrasted. synonyms: '' = the shipped sets of the training vocabulary
  # (input_pipeline/vocab/synonyms), or a path to a synonym file. synonym_filter: the per-segment
  # CLIP filter file of `python -m input_pipeline.synonyms filter` (the release keeps p > 0.1);
  # training refuses to start without it unless unfiltered_synonyms=True says so. Caption
  # grounding (caption_weight, every prediction set) uses COCO Captions
  # (coco/annotations/captions_train2017.json) and is off for a training set without captions.
  c.loss = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, void_weight=0.1,
                num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
                region_dropout=0.5, synonym_weight=10.0, synonyms="", synonym_filter="",
                unfiltered_synonyms=False, kd_weight=10.0, kd_canvas=640, kd_max_crops=200,
                kd_crop_size=0, images_per_device=0, caption_weight=10.0, caption_regions=25)
  c.data = dict(train="coco_panoptic_133", unseen="", train_max_images=0, root="",
                train_mapper="lsj", crop_size=512, scale_range=(0.8, 1.2), cat_max_ratio=1.0,
                min_size_train=(512,), min_size_train_sampling="choice", max_size_train=2048,
                crop_enabled=False, train_bucket=32, num_masks=100, worker_count=2, skip_bad=False)
  c.evals = dict(
      # The release sets no test size: detectron2's INPUT.MIN_SIZE_TEST 800 / MAX_SIZE_TEST 1333
      # (detectron2/config/defaults.py 63-65; its test mapper DatasetMapperVoca is not released).
      val=dict(type="miou", dataset="ade20k_150", split="val", every=10000, max_images=0,
               short_side=800, max_size=1333, batch_size=0, miou_convention="maft_plus"),
      pictures=dict(type="predictions", dataset="ade20k_150", split="val", every=0, num=4,
                    short_side=800, max_size=1333))
  c.optim = dict(lr=3e-4, weight_decay=0.05, lr_multipliers=[(BACKBONE, 0.1)], schedule="step",
                 decay_steps=(40000, 45000), decay_factor=0.1, warmup_steps=0, poly_power=0.9,
                 clip_norm=0.01, b1=0.9, b2=0.999, eps=1e-8,
                 # The release's groups (train_net.py 257-270): no decay for norm layers
                 # (WEIGHT_DECAY_NORM 0) and nn.Embedding (WEIGHT_DECAY_EMBED 0, config.py:24),
                 # i.e. the decoder's queries and level embedding; every other parameter decays.
                 no_decay=r".*(query_feat|query_embed|predictor/level_embed)$", no_decay_1d=False)
  c.frozen = list(FROZEN)
  c.train = dict(batch_size=112, steps=50000, grad_accum=1, log_every=50, ckpt_every=2000,
                 keep_checkpoints=3)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding = dict(rules=())
  return c


def get_config(arg: str = ""):
  variants = parse_variants(arg, {"demo"}, "configs/gkc_r50.py")
  c = base_config()
  if "demo" in variants:
    recipe_module(__file__.replace("gkc_r50.py", "gkc_vitb.py")).demo(c)
    c.clip.arch = "resnet_tiny"
  return c
