r"""MAFT+ with a CLIP ViT-B/16 (Content-Dependent Transfer + Representation Compensation).

  python -m ovs_jax.train --config=configs/maft_plus_vitb.py --workdir=runs/cdt_vitb \
      --config.clip.weights=/path/to/clip-vit-base-patch16
  python -m ovs_jax.train --config=configs/maft_plus_vitb.py:demo --workdir=runs/demo   # offline demo

`configs/cdt_vitb.py` is the same recipe under its first name.

Recipe (paper, adapted to ViT-B/16): COCO-Stuff-171 train, batch 8, 60k steps, AdamW 1e-4 with
backbone x0.1, weight decay 2e-5, poly 0.9, no warmup, global-norm clip 0.01, 100 queries,
bfloat16 compute. Variants: `:demo` (embedded demo data, tiny demo CLIP, ~6.5 min on 2 CPU cores),
`:panoptic` (CDT in its panoptic form).
"""
import ml_collections

from ovs_jax.config_utils import parse_variants
from ovs_jax.methods.maft_plus import BACKBONE, FROZEN


def get_config(arg: str = ""):
  variants = parse_variants(arg, {"demo", "panoptic"}, "configs/maft_plus_vitb.py",
                            combine=[{"demo", "panoptic"}])
  c = ml_collections.ConfigDict()
  c.method = "maft_plus"
  c.seed = 0

  c.clip = dict(
      weights="",         # HF CLIP dir, OpenCLIP ViT file or `ovs_jax.convert` dir (required)
      arch="vit_b16",     # only used with weights="random" or "demo" (pre-trained on the demo data)
      hidden_act="",      # for OpenCLIP files: quick_gelu (OpenAI) or gelu
      templates="vild",
  )
  c.model = dict(num_queries=100, hidden_dim=256, enc_layers=6, enc_ffn_dim=1024, dec_layers=9,
                 dec_ffn_dim=2048, num_heads=8, deform_points=4, cdt_heads=8, cdt_mode="semantic",
                 # CDT's dense map: "official" (the official code's NCHW-as-rows reading, which its
                 # checkpoints were trained with) or "per_pixel" (the paper); docs/maft_plus.md.
                 cdt_dense="official",
                 # remat recomputes CLIP and pixel-decoder layers in the backward pass
                 # (less memory, about one more forward; see docs/training.md, Memory).
                 dtype="bfloat16", scan=False, remat=False,
                 # Attention kernel: "auto" (per backend and length), "xla", "chunked", "cudnn", "pallas"
                 # (ovs_jax/ops/attention.py).
                 attention="auto",
                 # Inference: "none" = MAFT+ (out-of-vocab class probabilities x (1 - p_void));
                 # "geometric" = FC-CLIP's ensemble with the in-vocab head (alpha seen, beta unseen).
                 ensemble="none", ensemble_alpha=0.4, ensemble_beta=0.8)
  c.loss = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, void_weight=0.1, num_points=12544,
                oversample_ratio=3.0, importance_sample_ratio=0.75, mask_aware_weight=1.0, rc_weight=0.1,
                # True: unlabelled pixels (void, padding, unseen classes) are left out of the mask
                # losses and the matching instead of being every mask's negatives (the official
                # code's way); for the zero-shot protocol (docs/evaluation.md).
                ignore_unlabelled_pixels=False)
  # The official MAFT+ data protocol (docs/maft_plus.md, "Official recipe and test protocol"). Train mapper
  # "mask_former_semantic": short side drawn from min_size_train (detectron2 INPUT.MIN_SIZE_TRAIN),
  # long side <= max_size_train, [crop], flip, pad to the batch canvas (orientation groups,
  # sides rounded up to train_bucket: larger buckets compile fewer shapes but pad more).
  # "lsj": scale jitter by scale_range around crop_size, fixed crop_size canvas.
  # unseen="zero_shot": train on the seen classes of the dataset's zero-shot split (input_pipeline/zero_shot.py).
  c.data = dict(train="coco_stuff_171", unseen="", train_max_images=0,
                root="", train_mapper="mask_former_semantic", min_size_train=(800,),
                min_size_train_sampling="choice", max_size_train=1333, crop_enabled=False,
                crop_size=640, cat_max_ratio=1.0, train_bucket=32, scale_range=(0.1, 2.0),
                num_masks=100, worker_count=2, skip_bad=False)
  # Evaluators (ovs_jax/evaluators): every N steps and after the last (0: last only, -1: never).
  # Test protocol: detectron2 MIN/MAX_SIZE_TEST; batch 0 = one image per device. mIoU
  # denominator: "maft_plus" (MAFT+'s evaluator) or "detectron2"; see ovs_jax/metrics.py.
  c.evals = dict(
      val=dict(type="miou", dataset="ade20k_150", split="val", every=10000, max_images=0,
               short_side=800, max_size=1333, batch_size=0, miou_convention="maft_plus"),
      pictures=dict(type="predictions", dataset="ade20k_150", split="val", every=0, num=4,
                    short_side=800, max_size=1333))
  # MAFT-Plus train_net.py build_optimizer: no decay on norm layers and nn.Embedding tables (here:
  # queries, decoder level embeddings, void, HF CLIP's position table); biases, the pixel
  # decoder's level_embed (an nn.Parameter) and the in-vocab logit scale decay.
  c.optim = dict(lr=1e-4, weight_decay=2e-5, lr_multipliers=[(BACKBONE, 0.1)], schedule="poly",
                 poly_power=0.9, warmup_steps=0, decay_steps=(), decay_factor=0.1, clip_norm=0.01,
                 b1=0.9, b2=0.999, eps=1e-8,
                 no_decay=r".*(query_feat|query_embed|predictor/level_embed|void_embedding|"
                          r"position_embedding)", no_decay_1d=False)
  c.frozen = list(FROZEN)
  c.train = dict(batch_size=8, steps=60000, grad_accum=1, log_every=50, ckpt_every=2000,
                 keep_checkpoints=3)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding = dict(rules=())  # [(logical axis, mesh axis)] replacing ovs_jax.sharding.RULES

  if "panoptic" in variants:
    c.model.cdt_mode = "panoptic"
  if "demo" in variants:
    c.clip.weights = "demo"  # a tiny CLIP pre-trained on demo image-caption pairs (~2 min, once, cached)
    c.clip.arch = "tiny"
    c.model.update(num_queries=16, hidden_dim=64, enc_layers=1, enc_ffn_dim=128, dec_layers=3,
                   dec_ffn_dim=128, num_heads=4, deform_points=2, cdt_heads=4, dtype="float32",
                   # FC-CLIP's ensemble: the trained in-vocab head votes with weight 0.6 on seen
                   # classes and not at all on the held-out ones, whose names it never trained on
                   # (β 0.8 -> 1.0: demo-val unseen 18.6 -> 31.6, seen 62.8 -> 63.2; docs/maft_plus.md).
                   ensemble="geometric", ensemble_beta=1.0,
                   # The paper's per-pixel CDT map, not the official code's NCHW-as-rows reading:
                   # on this tiny demo the official reading gave mIoU 66.8 at step 600 against
                   # 74.2 (docs/maft_plus.md, Demo run).
                   cdt_dense="per_pixel")
    c.loss.update(num_points=1024, ignore_unlabelled_pixels=True)
    # 400 small square images: scale jitter (lsj) and 128 px keep the demo fast and varied.
    # Open vocabulary: 7 of the 30 demo classes (snow, tiled floor, star, kite, car, mushroom,
    # umbrella) are held out of training (their pixels are ignored, their names never seen by the
    # head) and evaluated with the rest: mIoU over all 30 classes,
    # seen / unseen / hIoU, next to training-free MaskCLIP with the same demo CLIP. The demo CLIP
    # itself learnt all 30 names from captions, at image level only, as CLIP does (docs/interchange.md#demo-clip).
    c.data.update(train="demo", unseen="zero_shot", train_mapper="lsj", crop_size=128,
                  scale_range=(0.8, 1.25), num_masks=12, worker_count=0)
    c.evals.val = dict(type="zero_shot", dataset="demo", split="val", protocol="zero_shot",
                       baseline="maskclip", every=300, max_images=64, short_side=128,
                       max_size=1333, batch_size=8, miou_convention="maft_plus")
    c.evals.pictures.update(dataset="demo", short_side=128, protocol="zero_shot")
    # At wd 0.05 biases matter: no decay on any 0/1-d parameter nor on embedding tables.
    c.optim.update(lr=3e-4, clip_norm=1.0, lr_multipliers=[(BACKBONE, 1.0)], weight_decay=0.05,
                   no_decay_1d=True, no_decay=r".*(norm|/bias$|embedding|embed$|logit_scale|/scale$|"
                                               r"query_feat|query_pos|level_embed)")
    c.train.update(batch_size=8, steps=600, log_every=25, ckpt_every=200)
  return c
