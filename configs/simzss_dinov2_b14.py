r"""SimZSS with a frozen DINOv2 ViT-B/14 with registers: a CLIP-shaped text tower trained from
COCO Captions to meet the frozen patches (global InfoNCE + the local concept loss).

  python -m ovs_jax.train --config=configs/simzss_dinov2_b14.py --workdir=runs/simzss \
      --config.vision.weights=/path/to/dinov2-with-registers-base --config.data.root=/path/to/coco
  python -m ovs_jax.train --config=configs/simzss_dinov2_b14.py:demo --workdir=runs/simzss_demo  # CPU, offline

Values marked DESIGN are DESIGN §6 (the official code / paper); OURS are ours (docs/simzss.md).
Evaluation: mIoU on every benchmark with the trained text tower over any vocabulary; a class named
"background" (voc_21) scores `model.background_threshold` (reported with the results).
"""
import ml_collections

from ovs_jax.config_utils import parse_variants
from ovs_jax.methods.simzss import FROZEN

# RELEASE (tileb1/simzss @2142ac5, args_coco.json): `batch_size` 512 is per GPU, on the paper's
# 8 GPUs; the contrastive batch (and its negatives) is their product. On fewer devices keep
# GLOBAL_BATCH (more per device: memory) or set both (a smaller batch is another recipe).
PER_DEVICE_BATCH, DEVICES = 512, 8
GLOBAL_BATCH = PER_DEVICE_BATCH * DEVICES                  # 4096
# RELEASE: an "epoch" is `train_num_samples` 400k image–caption pairs, 10 epochs; its loader rounds
# each epoch up to whole global batches (src/training/data.py L488-497: ceil(400000 / 4096) = 98).
TRAIN_NUM_SAMPLES, EPOCHS = 400_000, 10
STEPS = EPOCHS * -(-TRAIN_NUM_SAMPLES // GLOBAL_BATCH)     # 980 steps = 4.01 M samples

# (evaluator name, dataset) of the benchmarks we ship; short side 448 as the paper's window.
BENCHMARKS = (("voc20", "voc_20"), ("voc21", "voc_21"), ("pc59", "pc_59"), ("pc459", "pc_459"),
              ("ade150", "ade20k_150"), ("ade847", "ade20k_847"), ("stuff171", "coco_stuff_171"),
              ("cityscapes", "cityscapes_19"))


def get_config(arg: str = ""):
  variants = parse_variants(arg, {"demo"}, "configs/simzss_dinov2_b14.py")
  c = ml_collections.ConfigDict()
  c.method = "simzss"
  c.seed = 0
  # Frozen vision tower (DESIGN): timm vit_base_patch14_reg4_dinov2 = HF dinov2-with-registers-base.
  # RELEASE: the DVT denoiser on (README command and args_coco.json `denoiser_type transformer`):
  # its weights file is vision.denoiser (vit_base_patch14_reg4_dinov2.lvd142m.pth, README).
  c.vision = dict(tower="dinov2", arch="vit_base_patch14_reg4_dinov2", weights="",
                  denoiser_type="transformer", denoiser="")
  c.clip = dict(templates="vild")  # OURS: ViLD's templates for class names at inference
  c.model = dict(
      attention="auto",        # "auto", "xla", "chunked", "cudnn", "pallas" (ovs_jax/ops/attention.py)
      text_width=512, text_layers=12, text_heads=8,  # DESIGN: CLIP-shaped text tower
      text_init="random",           # RELEASE: from scratch, OpenCLIP's init; "clip": config.clip's tower
      init_temperature=0.07,        # DESIGN: logit scale 1/0.07, clamped ≤ 100
      background_threshold=0.2,     # OURS: cosine below which a pixel is "background" (voc_21)
      class_embedding="eot",        # OURS: class names as captions (EOT); "concept": as L_l's c_l
      dtype="float32")
  c.loss = dict(local_weight=0.05,           # DESIGN: λ
                attention_temperature=0.1,   # DESIGN: patch attention
                concept_temperature=0.07,    # DESIGN: 1/0.07 on prototype·visual-concept
                local_target="self",         # DESIGN: official self-labelling; "label": the paper's
                # RELEASE: prototypes per GPU (its per-device batch); 0 = one global group
                prototype_group=PER_DEVICE_BATCH)
  # RELEASE: img2dataset webdataset shards (README "Dataset preparation"; images centre-cropped to
  # 512² at download), one sample per image–caption pair; RandomResizedCrop(224, 0.9–1.0, bicubic)
  # straight from the stored image (src/open_clip/transform.py L16, L105-110), no centre-crop step.
  # RELEASE concepts: its 573-name bank; spaCy's rule cached per shard by `python -m
  # input_pipeline.caption_concepts extract` into concepts_dir, else the named fallback on the fly.
  c.data = dict(captions="webdataset", shards="", concepts_dir="", root="", crop_size=224,
                scale_range=(0.9, 1.0), interpolation="bicubic", concept_bank="simzss_release",
                concept_extractor="bank-match", train_max_images=0, worker_count=4, skip_bad=False)
  # The paper's protocol (TCL/mmseg): short side 448, sliding 448² windows every 224 pixels.
  c.evals = {name: dict(type="miou", dataset=ds, split="val", every=0, max_images=0, short_side=448,
                        max_size=2048, batch_size=0, miou_convention="maft_plus", mode="slide",
                        window=448, stride=224)
             for name, ds in BENCHMARKS}
  # DESIGN: AdamW 3e-5, β (0.9, 0.98), eps 1e-6, wd 0.2 off gains/biases/scale; cosine, 10% warmup.
  steps, batch = STEPS, GLOBAL_BATCH
  c.optim = dict(lr=3e-5, weight_decay=0.2, lr_multipliers=[], schedule="cosine",
                 warmup_steps=int(0.1 * steps),  # RELEASE: --warmup 0.1 of the steps (main.py L389) poly_power=0.9, decay_steps=(), decay_factor=0.1,
                 clip_norm=0.0, b1=0.9, b2=0.98, eps=1e-6, no_decay=r"$^", no_decay_1d=True)
  c.frozen = list(FROZEN)
  c.train = dict(batch_size=batch, steps=steps, grad_accum=1, log_every=50, ckpt_every=500,
                 keep_checkpoints=3)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding = dict(rules=())

  if "demo" in variants:
    # No DINOv2 weights offline: the frozen tower is the demo CLIP's image tower (`clip.weights`
    # "demo": the tiny CLIP pre-trained on demo captions), its image embedding as the class
    # token and its MaskCLIP dense map as the patches; a small text tower from scratch.
    c.vision.update(tower="clip")
    c.clip.update(weights="demo", arch="tiny")
    c.model.update(text_width=64, text_layers=2, text_heads=2)
    # The demo scenes' classes (sun, moon, star, ...) are not all release-bank names: our bank.
    c.data.update(captions="demo", worker_count=0, concept_bank="", concept_extractor="match")
    c.evals = dict(val=dict(type="miou", dataset="demo", split="val", every=0, max_images=64,
                            short_side=224, max_size=2048, batch_size=8, miou_convention="maft_plus"))
    steps = 300
    c.optim.update(lr=2e-3, warmup_steps=steps // 10)  # OURS: a tiny tower from scratch, few steps
    c.train.update(batch_size=32, steps=steps, log_every=25, ckpt_every=steps)
  return c
