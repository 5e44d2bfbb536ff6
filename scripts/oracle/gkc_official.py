"""Build the official GKC model (github yongliu20/GKC @ 21313c8, `OpenSegMaskFormerDenseTextKDSyn` of
mask2former/maskformer_model_voca_dense_kd_syn.py) on the CPU with random weights. Shared by
gkc_forward.py and gkc_keys.py; runs in the oracle venv (../shared/oracle/setup.sh), never in CI.

The release is incomplete; what this file supplies, and nothing else:
* mask2former/__init__.py imports ~20 modules the release does not ship (coco_*_dataset_mapper,
  maskformer_model, maskformer_model_voca*, ...). It is never executed: `mask2former` is made an
  empty package over the extracted directory, and only the files the GKC model needs are imported
  (config, modeling, clip_models, kd_clip, maskformer_model_voca_dense_kd_syn).
* maskformer_model_voca_dense_kd_syn.py:16 imports `torch.nn.modules.faster_transformer`, which
  current torch lacks; it is never used there: an empty module stands in.
* clip_models.py:8 and kd_clip.py:8 import `drop` from `timm.models.layers`, which current timm
  no longer re-exports: the module is re-attached under that name (`timm.layers.drop`, unused).
* maskformer_model_voca_dense_kd_syn.py:178 indexes a detectron2 `ShapeSpec` (a namedtuple in the
  detectron2 the release used, a dataclass today): `ShapeSpec` gets the namedtuple's indexing.
* `--tiny` only: clip_models.py:249 declares RN50's channels (256..2048) whatever RESNETS.WIDTH is,
  so a narrower ResNet would build a head for the wrong inputs. `TinyCLIPResNetWithAttention`
  subclasses the official backbone and declares the channels its width gives (4·width·2^i);
  the computation is the official one.
* The text encoder's `positional_embedding` and `text_projection` are `torch.empty` in the release
  (clip_models.py:701-703; the real run loads CLIP): they get CLIP's initialisation.
The extracted release lives in $OVS_ORACLE_HOME/gkc (default ~/.cache/ovs-oracle/gkc):
  mkdir -p ~/.cache/ovs-oracle/gkc && git --git-dir=/work/.mirror/yongliu20+GKC/repo archive HEAD \
      | tar -x -C ~/.cache/ovs-oracle/gkc
"""
import os
import sys
import types

HOME = os.environ.get("OVS_ORACLE_HOME", os.path.expanduser("~/.cache/ovs-oracle"))
ROOT = os.path.join(HOME, "gkc")
sys.modules.setdefault("torch.nn.modules.faster_transformer", types.ModuleType("faster_transformer"))
import timm.layers  # noqa: E402
import timm.models.layers  # noqa: E402

timm.models.layers.drop = timm.layers.drop  # clip_models.py:8 imports the submodule by its old path
_pkg = types.ModuleType("mask2former")
_pkg.__path__ = [os.path.join(ROOT, "mask2former")]
sys.modules["mask2former"] = _pkg

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec, build_model  # noqa: E402

# maskformer_model_voca_dense_kd_syn.py:178 indexes a ShapeSpec (`['attn'][0]`): the detectron2 of
# the release had it as a namedtuple (channels, height, width, stride); today's is a dataclass.
ShapeSpec.__getitem__ = lambda self, i: (self.channels, self.height, self.width, self.stride)[i]

import mask2former.clip_models as clip_models  # noqa: E402  (registers the backbones)
import mask2former.modeling  # noqa: E402,F401  (registers the head, pixel decoder, decoder)
import mask2former.maskformer_model_voca_dense_kd_syn as gkc_model  # noqa: E402,F401
from mask2former.config import add_maskformer2_config  # noqa: E402

YAML = os.path.join(ROOT, "configs/coco/panoptic-segmentation/"
                    "maskformer2_R50_bs16_50ep_voca_ground_perRegion_dense.yaml")


@BACKBONE_REGISTRY.register()
class TinyCLIPResNetWithAttention(clip_models.CLIPResNetWithAttention):
  """The official backbone with the channels of its actual width declared (see module docstring)."""

  def __init__(self, cfg, input_shape):
    super().__init__(cfg, input_shape)
    w = cfg.MODEL.RESNETS.WIDTH
    for i in range(4):
      self._out_feature_channels[f"res{i + 2}"] = 4 * w * 2 ** i

  def output_shape(self):
    return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features}


TINY = dict(width=4, layers=[1, 1, 1, 1], embed=32, input_resolution=64, text_width=32,
            text_heads=1, text_layers=1, vocab=64, context=16, hidden=32, heads=4, ffn=64,
            queries=8, dec_layers=4, enc_layers=1, num_classes=5)


def official_cfg(tiny: bool, num_classes: int = 0):
  """The yaml's setting with GKC's model (dense text-KD + synonyms: the class this release's
  paper model is) and its defaults from mask2former/config.py; `tiny` shrinks the sizes."""
  from detectron2.projects.deeplab import add_deeplab_config
  cfg = get_cfg()
  add_deeplab_config(cfg)  # as the release's train_net.py (RESNETS.STEM_TYPE etc. in the yaml)
  add_maskformer2_config(cfg)
  cfg.merge_from_file(YAML)
  cfg.MODEL.META_ARCHITECTURE = "OpenSegMaskFormerDenseTextKDSyn"
  cfg.MODEL.PER_REGION.SYN_CLASS.ENABLED = True  # GKC's text diversification (config.py:132)
  cfg.MODEL.RESNETS.PRETRAINED = None
  cfg.MODEL.TEXT_ENCODER.PRETRAINED = None
  cfg.MODEL.DEVICE = "cpu"
  if tiny:
    t = TINY
    cfg.MODEL.BACKBONE.NAME = "TinyCLIPResNetWithAttention"
    cfg.MODEL.RESNETS.WIDTH = t["width"]
    cfg.MODEL.RESNETS.LAYERS = t["layers"]
    cfg.MODEL.RESNETS.OUTPUT_DIM = t["embed"]
    cfg.MODEL.RESNETS.INPUT_RESOLUTION = t["input_resolution"]
    cfg.MODEL.TEXT_ENCODER.TRANSFORMER_WIDTH = t["text_width"]
    cfg.MODEL.TEXT_ENCODER.TRANSFORMER_HEADS = t["text_heads"]
    cfg.MODEL.TEXT_ENCODER.TRANSFORMER_LAYERS = t["text_layers"]
    cfg.MODEL.TEXT_ENCODER.EMBED_DIM = t["embed"]
    cfg.MODEL.TEXT_ENCODER.VOCAB_SIZE = t["vocab"]
    cfg.MODEL.TEXT_ENCODER.CONTEXT_LENGTH = t["context"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = t["hidden"]
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = t["hidden"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = t["num_classes"]
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = t["enc_layers"]
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = t["hidden"]
    cfg.MODEL.MASK_FORMER.NHEADS = t["heads"]
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = t["ffn"]
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = t["queries"]
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = t["dec_layers"]
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
  if num_classes:
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
  cfg.freeze()
  return cfg


def build_official(tiny: bool, seed: int = 0, quantize: bool = False, num_classes: int = 0):
  """The official model in eval mode, random weights: the release's initialisation, then every
  norm, bias and BatchNorm statistic perturbed (so a skipped or swapped one shows)."""
  torch.manual_seed(seed)
  model = build_model(official_cfg(tiny, num_classes)).eval()
  te = model.text_encoder
  with torch.no_grad():
    torch.nn.init.normal_(te.positional_embedding, std=0.01)
    torch.nn.init.normal_(te.text_projection, std=te.transformer.width ** -0.5)
    for name, p in model.named_parameters():
      if name.endswith("bias") or any(t in name for t in ("bn", "norm", "ln_", "downsample.1")):
        p.add_(0.1 * torch.randn_like(p))
    model.text_kd_logit_scale.fill_(1.3)  # s of the text-guided KD (init 1): s² must show
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn_like(b))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand_like(b))
      elif name.endswith("num_batches_tracked"):
        b.fill_(7)
    if quantize:  # values on a 2^-10 grid: the fixture compresses (and every value stays random)
      for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and "empty_weight" not in name:  # those: from the config
          t.copy_(torch.round(t * 1024) / 1024)
  return model
