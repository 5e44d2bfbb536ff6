"""Oracle for SimZSS: the release's own code (tileb1/simzss @2142ac5) on seeded weights, small inputs.

  git --git-dir=/work/.mirror/tileb1+simzss/repo archive HEAD ... (or extract file by file) into
  ~/.cache/ovs-oracle/simzss, then:
  ~/.cache/ovs-oracle/venv/bin/python scripts/oracle/simzss_forward.py \
      --release ~/.cache/ovs-oracle/simzss --out tests/data/simzss/forward.npz

Built by the release's machinery: `open_clip.factory.create_model("ours_dinov2_ViT-B-14_reg", args=
Namespace(args_coco.json))` -> `SimZSS` with `Denoiser(ViTWrapper(timm vit_base_patch14_reg4_dinov2))`
and its DVT checkpoint loaded by the release's own `torch.load(checkpoint_path)['denoiser']`.
Stubbed (what the release needs and this machine lacks), nothing else:
  * timm.create_model(pretrained=True) -> pretrained=False and depth=1 (no hub download; one block
    keeps the fixture small: the ViT-B width 768 stays, the Denoiser hard-codes it);
  * the model config's text tower -> width 64, 2 layers, 2 heads (same code path, small);
  * timm's VisionTransformer._intermediate_layers (removed from recent timm; the release calls it)
    -> the old helper's behaviour (patch embed, positions, blocks; outputs of the last n);
  * ZSLoss's class counts on device 'cuda' -> the CPU;
  * the DVT checkpoint file -> one written here in DVT's layout ({"denoiser": {pos_embed, denoiser.*}}).
Weights: every parameter is overwritten from a numpy generator (seed 0) in sorted-name order by
`seeded_value` below, so tests regenerate the same state dict from the names and shapes stored in
the fixture (no weights stored). Saved: names/shapes, inputs, the forward (class token, patch
tokens with and without the denoiser, EOT and every text token, projected) and ZSLoss's terms.
"""
import argparse
import json
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import numpy as np


def seeded_value(name: str, shape, rng):
  """The value a parameter gets (the test re-derives this exactly)."""
  x = rng.standard_normal(shape).astype(np.float32)
  if name == "logit_scale":
    return np.full(shape, np.log(1 / 0.07), np.float32)
  if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_1.weight", "ln_2.weight",
                    "ln_final.weight", ".gamma")):
    return 1.0 + 0.1 * x
  return 0.05 * x


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--release", default=str(Path.home() / ".cache/ovs-oracle/simzss"))
  p.add_argument("--out", required=True)
  args_cli = p.parse_args()
  release = Path(args_cli.release)
  sys.path.insert(0, str(release / "src"))
  import timm
  import torch

  real_create = timm.create_model

  def create_model(name, pretrained=False, **kw):  # stub: no download, one block
    return real_create(name, pretrained=False, depth=1, **kw)
  timm.create_model = create_model

  from timm.models.vision_transformer import VisionTransformer
  if not hasattr(VisionTransformer, "_intermediate_layers"):  # stub: timm < 1.0.8's helper, gone since
    def _intermediate_layers(self, x, n=1):
      take = set(range(len(self.blocks) - n, len(self.blocks)) if isinstance(n, int) else n)
      x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
      out = []
      for i, blk in enumerate(self.blocks):
        x = blk(x)
        if i in take:
          out.append(x)
      return out
    VisionTransformer._intermediate_layers = _intermediate_layers

  import open_clip
  from open_clip import factory
  from open_clip.loss import ZSLoss
  factory._rescan_model_configs()
  cfg = factory._MODEL_CONFIGS["ours_dinov2_ViT-B-14_reg"]
  cfg["text_cfg"].update(width=64, layers=2, heads=2)

  with open(release / "args_coco.json") as f:
    args = Namespace(**json.load(f))
  args.nouns_path = str(release / "src/training/class_names/7_dataset_eval_merged.txt")
  args.n_classes = len(open(args.nouns_path).readlines())

  # The DVT checkpoint file the README names, in DVT's layout, with seeded weights.
  rng = np.random.default_rng(1)
  dvt = {"pos_embed": torch.from_numpy(0.05 * rng.standard_normal((1, 37 * 37, 768)).astype(np.float32))}
  probe = timm.layers  # noqa: F841
  tmp = Path(tempfile.mkdtemp())
  outputs = {}
  for denoised in (True, False):
    args.denoiser_type = "transformer" if denoised else None
    if denoised:
      from DenoisingViT import Denoiser
      block = Denoiser(vit=None, denoiser_type="transformer").state_dict()
      dvt_names = [k for k in sorted(block) if k.startswith("denoiser.")]
      for k in dvt_names:
        dvt[k] = torch.from_numpy(seeded_value(k, tuple(block[k].shape), rng))
      outputs["dvt_names"] = np.array(dvt_names)
      outputs["dvt_shapes"] = np.array(json.dumps([list(block[k].shape) for k in dvt_names]))
      torch.save({"denoiser": dvt}, tmp / "vit_base_patch14_reg4_dinov2.lvd142m.pth")
      cfg["vision_cfg"]["checkpoint_path"] = str(tmp / "vit_base_patch14_reg4_dinov2.lvd142m.pth")
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, "", precision="fp32", device="cpu", args=args,
                                   pretrained_image=True, output_dict=True)
    model.eval()
    wrng = np.random.default_rng(0)
    names, shapes = [], []
    with torch.no_grad():
      for name, param in sorted(model.named_parameters()):
        if name.startswith("visual.denoiser.") or name == "visual.pos_embed":
          continue  # the DVT file's (loaded by the release's code above)
        param.copy_(torch.from_numpy(seeded_value(name, tuple(param.shape), wrng)))
        names.append(name)
        shapes.append(list(param.shape))
    if denoised:
      sd = model.state_dict()
      for k, v in dvt.items():
        np.testing.assert_array_equal(sd["visual." + k].numpy(), v.numpy())  # the release loaded it
      # The checkpoint as the release's training writes it (main.py: {"state_dict": ...}, DDP's
      # "module." prefix), for `convert from-official`: its keys and buffers are what we record.
      outputs["state_dict_keys"] = np.array(sorted(sd))
    tag = "dvt" if denoised else "raw"
    irng = np.random.default_rng(2)
    image = torch.from_numpy(irng.standard_normal((2, 3, 70, 70)).astype(np.float32))  # 5×5 patches
    tok = open_clip.get_tokenizer(args.model)
    captions = ["a dog on a couch next to a cat", "two cats and a dog"]
    text = tok(captions)
    # Concepts as data.py hands them over: token positions per concept (0-padded) and bank ids.
    bank = sorted(set(l.strip().lower() for l in open(args.nouns_path)))
    concept_indices = torch.zeros(2, 32, 16, dtype=torch.long)
    labels = -torch.ones(2, 32, dtype=torch.long)
    spans = {0: [("dog", [2]), ("couch", [5]), ("cat", [9])], 1: [("cat", [2]), ("dog", [5])]}
    for b, items in spans.items():
      for j, (word, pos) in enumerate(items):
        concept_indices[b, j, :len(pos)] = torch.tensor(pos)
        labels[b, j] = bank.index(word)
    with torch.no_grad():
      img = model.encode_image(image, normalize=False)
      eot, tokens = model.encode_text(text, normalize=False, return_all=True)
      out = model(image, text, concept_indices=concept_indices.clone(), concepts_labels=labels.clone())
      zeros = torch.zeros  # stub: ZSLoss.__init__ puts its class counts on 'cuda'; this CPU has none
      torch.zeros = lambda *a, device=None, **k: zeros(*a, **k)
      try:
        loss = ZSLoss(use_dense_loss=True, args=Namespace(n_classes=args.n_classes, lambda_loss=args.lambda_loss),
                      local_loss=True, gather_with_grad=True, cache_labels=True, rank=0, world_size=1)
      finally:
        torch.zeros = zeros
      terms, *_ = loss(out["image_features"], out["text_features"], out["logit_scale"],
                       out["cls_embeds_txt"], out["cls_embeds_visual"], out["logit_scale_local"],
                       out["classification_weights_ema"], out["concepts_labels"], output_dict=True)
    outputs[f"{tag}_cls"] = img["x_clstoken"].numpy()
    outputs[f"{tag}_patches"] = img["x_patchtokens"].numpy()[:1]  # image 0 (fixture size)
    outputs[f"{tag}_loss_global"] = terms["cliploss"].numpy()
    outputs[f"{tag}_loss_local"] = (terms["ccloss"] / args.lambda_loss).numpy()
    outputs["eot"], outputs["tokens"] = eot.numpy(), tokens.numpy()[:, :12]  # the captions' tokens
    outputs["image_sum"], outputs["text"] = image.numpy().sum(), text.numpy()
    outputs["concept_indices"], outputs["concept_labels"] = concept_indices.numpy(), labels.numpy()
    outputs["param_names"], outputs["param_shapes"] = np.array(names), np.array(json.dumps(shapes))
  np.savez_compressed(args_cli.out, **outputs)
  print({k: v.shape for k, v in outputs.items()})


if __name__ == "__main__":
  main()
