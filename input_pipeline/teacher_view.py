"""The un-augmented picture GKC's distillation teacher cuts its segment crops from.

GKC's frozen CLIP embeds each ground-truth segment as it appears in the *original* image, not in
the flipped, rescaled training crop (DESIGN §5). `TeacherView` runs first in the mapper, before any
augmentation, and keeps a fixed-shape copy of the record that batches:

  teacher_image     (S, S, 3) uint8  the image, top-left; scaled down (bilinear) only when its long
                                     side exceeds S; grey 128 elsewhere
  teacher_segments  (S, S) int32     the same view of `pan_seg` (panoptic: segment 1..N, 0 = void)
                                     or of `label` (semantic: class id; ignore elsewhere)

On device the mask of target slot t is `teacher_segments == mask_ids[t]` (panoptic) or
`== mask_classes[t]` (semantic), and its box follows from the mask (`ops/segment_crops.py`), so
crops need no host round trip. S = `config.loss.kd_canvas`: 640 holds every COCO image unscaled.
"""
import numpy as np
import grain

from input_pipeline import transforms as T

GREY = 128


class TeacherView(grain.transforms.Map):

  def __init__(self, size: int, ignore_label: int = 255):
    self.size, self.ignore_label = int(size), ignore_label

  def map(self, el):
    key = "pan_seg" if "pan_seg" in el else "label"
    h, w = el["image"].shape[:2]
    scale = min(1.0, self.size / max(h, w))
    hw = (min(self.size, max(1, round(h * scale))), min(self.size, max(1, round(w * scale))))
    small = T.resize({"image": el["image"], key: el[key]}, hw)
    image = np.full((self.size, self.size, 3), GREY, np.uint8)
    image[:hw[0], :hw[1]] = small["image"]
    fill = 0 if key == "pan_seg" else self.ignore_label
    segments = np.full((self.size, self.size), fill, np.int32)
    segments[:hw[0], :hw[1]] = small[key]
    return dict(el, teacher_image=image, teacher_segments=segments)
