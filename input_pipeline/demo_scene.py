"""The demo world's painter: one labelled scene from a random stream (`input_pipeline/demo.py`).

30 classes (`input_pipeline/vocab/demo.txt`, docs/data.md#the-demo-world): 12 stuff classes
(sky or a brick wall above a wavy horizon, mountains on it, one or two textured grounds below) and
18 kinds of things painted far to near in perspective (nearer is larger), each with its own shape
and, for some, a random paint. Outdoor scenes (80 %) have a sky with at most one of sun / moon,
sometimes stars or a kite; indoor ones a brick wall over a wooden or tiled floor.
"""
import numpy as np
from PIL import Image, ImageDraw

(SKY, GRASS, WATER, ROAD, WALL, SAND, BALL, BOX, TREE, SUN, SNOW, GRAVEL, DIRT, MOUNTAIN, WOOD_FLOOR,
 TILES, MOON, STAR, KITE, HOUSE, CAR, CONE, FLOWER, MUSHROOM, RING, HEART, PYRAMID, BARREL, ROCK,
 UMBRELLA) = range(30)
NUM_CLASSES = 30
OUTDOOR_GROUNDS = (GRASS, WATER, ROAD, SAND, SNOW, GRAVEL, DIRT)
INDOOR_GROUNDS = (WOOD_FLOOR, TILES)
GROUNDS = OUTDOOR_GROUNDS + INDOOR_GROUNDS
SKY_THINGS = (SUN, MOON, STAR, KITE)
GROUND_THINGS = (BALL, BOX, TREE, HOUSE, CAR, CONE, FLOWER, MUSHROOM, RING, HEART, PYRAMID, BARREL,
                 ROCK, UMBRELLA)
INDOOR_THINGS = (BALL, BOX, CONE, FLOWER, RING, HEART, BARREL, UMBRELLA, MUSHROOM)
THINGS = SKY_THINGS + GROUND_THINGS
# Random paints of the painted things, read back from the pixels by the captions; "amber"
# because "orange" is a concept (a fruit) of the SimZSS bank.
PAINTS = {"red": (220, 30, 30), "blue": (30, 70, 220), "amber": (250, 140, 20),
          "yellow": (240, 220, 40), "purple": (140, 50, 190)}
PAINTED = (BALL, KITE, CAR, RING, HEART, UMBRELLA, FLOWER)


def _noise(rng, hw, cells, amp=1.0):
  """Smooth value noise (H, W) in about [-amp, amp]: random cells, bicubic upsampled."""
  ch, cw = max(2, hw[0] // cells), max(2, hw[1] // cells)
  low = Image.fromarray(rng.uniform(-1, 1, (ch, cw)).astype(np.float32), mode="F")
  return amp * np.asarray(low.resize((hw[1], hw[0]), Image.BICUBIC))


def _cells(rng, hw, size, lo, hi):
  """Blocky noise: one uniform value per size x size cell (pebbles, planks, bricks)."""
  low = rng.uniform(lo, hi, (hw[0] // size + 2, hw[1] // size + 2)).astype(np.float32)
  return np.kron(low, np.ones((size, size), np.float32))[:hw[0], :hw[1]]


def texture(cls, rng, hw, rows):
  """(H, W, 3) float RGB texture of a stuff class occupying image rows [rows[0], rows[1])."""
  h, w = hw
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  fine = rng.normal(0, 1, (h, w)).astype(np.float32)
  if cls == SKY:
    t = (y / h)[..., None]
    base = (1 - t) * np.array([40, 90, 200]) + t * np.array([150, 200, 245])
    cloud = np.clip(_noise(rng, hw, 24) * 1.8 - 0.3, 0, 1)[..., None]
    return base * (1 - cloud) + 245 * cloud
  if cls == GRASS:
    blades = _noise(rng, (h, w * 8), 2)[:, ::8]  # anisotropic noise: vertical streaks
    return np.array([60, 140, 45]) * (1 + 0.25 * blades + 0.12 * fine)[..., None]
  if cls == WATER:
    waves = np.sin(y * 0.9 + 3 * _noise(rng, hw, 20))
    return np.array([30, 95, 170]) + (25 * waves + 6 * fine)[..., None]
  if cls == ROAD:
    img = np.array([75, 75, 80]) + (14 * fine)[..., None]
    lane_y = rows[0] + rng.uniform(0.35, 0.65) * (rows[1] - rows[0])
    lane = (np.abs(y - lane_y) < 2) & ((x + rng.integers(20)) % 24 < 12)  # dashed centre line
    img[lane] = [235, 235, 225]
    return img
  if cls == WALL:
    bh, bw = int(rng.integers(9, 13)), int(rng.integers(20, 28))
    row = (y // bh).astype(int)
    mortar = (y % bh < 2) | ((x + (row % 2) * bw // 2) % bw < 2)
    col = ((x + (row % 2) * bw // 2) // bw).astype(int)  # every other row offset by half a brick
    shade = rng.uniform(0.8, 1.15, (row.max() + 2, w // bw + 3))[row, col]
    img = np.array([155, 65, 45]) * (shade + 0.06 * fine)[..., None]
    img[mortar] = [200, 195, 185]
    return img
  if cls == SAND:
    ripples = np.sin(y * 0.5 + x * 0.1 + 4 * _noise(rng, hw, 30))
    return np.array([215, 190, 130]) + (10 * ripples + 10 * fine)[..., None]
  if cls == SNOW:  # white, blue-shadowed drifts, glints
    drifts = _noise(rng, hw, 16)
    img = np.array([236, 242, 252]) + (10 * drifts)[..., None] * np.array([1.6, 1.2, 0.4])
    img[fine > 2.3] = 255
    return img
  if cls == GRAVEL:  # 3-px pebbles of varied grey-brown
    return np.array([150, 138, 120]) * (_cells(rng, hw, 3, 0.55, 1.25) + 0.05 * fine)[..., None]
  if cls == DIRT:  # dark brown blotches
    return np.array([115, 80, 50]) * (1 + 0.22 * _noise(rng, hw, 8) + 0.06 * fine)[..., None]
  if cls == MOUNTAIN:  # grey-violet rock, lit from the left
    light = 0.12 * np.sin(x * 0.15 + 2 * _noise(rng, hw, 10))
    return np.array([105, 100, 125]) * (1 + light + 0.08 * fine)[..., None]
  if cls == WOOD_FLOOR:  # horizontal planks with grain and dark seams
    ph = int(rng.integers(8, 12))
    plank = _cells(rng, (h, w), ph, 0.8, 1.15)[:, :1] * np.ones((1, w), np.float32)
    grain = 0.08 * np.sin(x * 0.25 + 6 * _noise(rng, hw, 12))
    img = np.array([165, 110, 60]) * (plank + grain + 0.04 * fine)[..., None]
    img[y % ph < 1] = [70, 45, 25]
    return img
  if cls == TILES:  # a checkerboard of cream and teal tiles with grey grout
    t = int(rng.integers(12, 18))
    check = ((y // t + x // t) % 2).astype(bool)
    img = np.where(check[..., None], np.array([40, 120, 130]), np.array([230, 225, 205])).astype(np.float32)
    img += (4 * fine)[..., None]
    img[(y % t < 1) | (x % t < 1)] = [150, 150, 150]
    return img
  raise ValueError(cls)


def _disc(hw, cy, cx, r):
  y, x = np.ogrid[0:hw[0], 0:hw[1]]
  return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def _polygon(hw, points):
  canvas = Image.new("1", (hw[1], hw[0]))
  ImageDraw.Draw(canvas).polygon([(float(px), float(py)) for py, px in points], fill=1)
  return np.asarray(canvas)


def _rect(hw, top, bottom, left, right):
  y, x = np.ogrid[0:hw[0], 0:hw[1]]
  return (y >= top) & (y <= bottom) & (x >= left) & (x <= right)


def _paint(rng):
  return np.array(list(PAINTS.values())[rng.integers(len(PAINTS))], np.float32)


def paint_object(cls, rng, hw, by, bx, s, img, label):
  """Paints thing `cls` of scale s standing at (by, bx) (sky things: centred there) into img/label."""
  h, w = hw
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  if cls == BALL:
    r = 9 * s
    cy = by - r
    m = _disc(hw, cy, bx, r)
    light = np.clip(1.25 - np.hypot(y - (cy - r / 3), x - (bx - r / 3)) / (1.6 * r), 0.35, 1.25)
    img[m] = np.clip(_paint(rng) * light[m][:, None], 0, 255)
  elif cls == BOX:
    bw, bh, d = 22 * s, 16 * s, 6 * s
    front = (y <= by) & (y >= by - bh) & (x >= bx - bw / 2) & (x <= bx + bw / 2)
    up, right = by - bh - y, x - bx - bw / 2  # oblique offsets of the top and side faces
    top = (up > 0) & (up <= d) & (x >= bx - bw / 2 + up) & (x <= bx + bw / 2 + up)
    side = (right > 0) & (right <= d) & (y <= by - right) & (y >= by - bh - right)
    m = front | top | side
    img[front] = [170, 120, 70]
    img[top] = [200, 155, 100]
    img[side] = [130, 90, 50]
    img[front & (np.abs(x - bx) < 1.5 * s)] = [215, 195, 150]  # packing tape
  elif cls == TREE:
    trunk = (y <= by) & (y >= by - 18 * s) & (np.abs(x - bx) <= 2.5 * s)
    r = 12 * s
    top_y = by - 18 * s
    crown = (_disc(hw, top_y - r * 0.7, bx, r) | _disc(hw, top_y - r * 0.2, bx - r * 0.6, r * 0.7)
             | _disc(hw, top_y - r * 0.2, bx + r * 0.6, r * 0.7))
    m = trunk | crown
    img[trunk] = [100, 65, 35]
    leaves = 1 + 0.3 * _noise(rng, hw, 3)
    img[crown] = np.clip(np.array([35, 120, 40]) * leaves[crown][:, None], 0, 255)
  elif cls == SUN:
    r = 8 * s
    m = _disc(hw, by, bx, r)
    glow = _disc(hw, by, bx, r * 1.6) & ~m
    img[glow] = 0.5 * img[glow] + [125, 120, 60]
    img[m] = [255, 230, 80]
  elif cls == MOON:  # a pale crescent: a disc less a shifted disc
    r = 8 * s
    m = _disc(hw, by, bx, r) & ~_disc(hw, by - 0.2 * r, bx + 0.55 * r, 0.85 * r)
    img[m] = [230, 230, 205]
  elif cls == STAR:  # a white five-pointed star
    r = 7 * s
    a = np.pi / 2 + np.arange(10) * np.pi / 5
    rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    m = _polygon(hw, np.stack([by - rad * np.sin(a), bx + rad * np.cos(a)], 1))
    img[m] = [250, 250, 240]
  elif cls == KITE:  # a painted diamond with a dark cross and a ribbon tail
    r = 9 * s
    m = _polygon(hw, [(by - 1.3 * r, bx), (by, bx + 0.8 * r), (by + 1.3 * r, bx), (by, bx - 0.8 * r)])
    img[m] = _paint(rng)
    img[m & ((np.abs(x - bx) < 0.8) | (np.abs(y - by) < 0.8))] = [40, 30, 30]
    tail = (np.abs(x - bx - 3 * np.sin((y - by) / 3)) < 1.2) & (y > by + 1.3 * r) & (y < by + 2.6 * r)
    img[tail] = [240, 240, 240]
    m = m | tail
  elif cls == HOUSE:  # a white wall, a red roof, a door and a window
    bw, bh = 26 * s, 18 * s
    body = _rect(hw, by - bh, by, bx - bw / 2, bx + bw / 2)
    roof = _polygon(hw, [(by - bh, bx - 0.62 * bw), (by - bh - 12 * s, bx), (by - bh, bx + 0.62 * bw)])
    img[body] = [225, 215, 190]
    img[roof] = [150, 40, 35]
    img[_rect(hw, by - 10 * s, by, bx - 8 * s, bx - 3 * s)] = [90, 55, 30]
    img[_rect(hw, by - 14 * s, by - 8 * s, bx + 3 * s, bx + 9 * s)] = [120, 180, 230]
    m = body | roof
  elif cls == CAR:  # a painted body, a glazed cabin, two black wheels
    bw = 30 * s
    body = _rect(hw, by - 11 * s, by - 4 * s, bx - bw / 2, bx + bw / 2)
    cabin = _polygon(hw, [(by - 11 * s, bx - 0.3 * bw), (by - 17 * s, bx - 0.18 * bw),
                          (by - 17 * s, bx + 0.18 * bw), (by - 11 * s, bx + 0.35 * bw)])
    wheels = _disc(hw, by - 4 * s, bx - 0.3 * bw, 4 * s) | _disc(hw, by - 4 * s, bx + 0.3 * bw, 4 * s)
    img[body] = _paint(rng)
    img[cabin] = [170, 210, 235]
    img[wheels] = [25, 25, 25]
    m = body | cabin | wheels
  elif cls == CONE:  # an orange cone with white bands on a dark base
    ch, cw = 20 * s, 8 * s
    m = _polygon(hw, [(by - 2 * s, bx - cw), (by - ch, bx - 1.5 * s), (by - ch, bx + 1.5 * s),
                      (by - 2 * s, bx + cw)])
    img[m] = [245, 110, 20]
    img[m & ((np.abs(y - (by - 0.45 * ch)) < 1.5 * s) | (np.abs(y - (by - 0.75 * ch)) < 1.2 * s))] = 245
    base = _rect(hw, by - 2 * s, by, bx - 1.2 * cw, bx + 1.2 * cw)
    img[base] = [50, 50, 50]
    m = m | base
  elif cls == FLOWER:  # five painted petals round a yellow heart on a green stem
    r = 4 * s
    cy = by - 14 * s
    stem = (np.abs(x - bx) <= 0.8 * s) & (y <= by) & (y >= cy)
    petals = np.zeros(hw, bool)
    for k in range(5):
      petals |= _disc(hw, cy + 1.3 * r * np.sin(2 * np.pi * k / 5), bx + 1.3 * r * np.cos(2 * np.pi * k / 5), r)
    centre = _disc(hw, cy, bx, 0.9 * r)
    img[stem] = [40, 130, 40]
    img[petals] = _paint(rng) * 0.6 + 100
    img[centre] = [250, 210, 30]
    m = stem | petals | centre
  elif cls == MUSHROOM:  # a red cap with white spots on a pale stalk
    r = 10 * s
    stalk = _rect(hw, by - 9 * s, by, bx - 3 * s, bx + 3 * s)
    cap = _disc(hw, by - 9 * s, bx, r) & (y <= by - 9 * s)
    spots = np.zeros(hw, bool)
    for k in range(4):
      spots |= _disc(hw, by - 9 * s - r * (0.35 + 0.3 * (k % 2)), bx + r * (-0.55 + 0.37 * k), 0.18 * r)
    img[stalk] = [235, 225, 200]
    img[cap] = [200, 30, 30]
    img[cap & spots] = [250, 250, 250]
    m = stalk | cap
  elif cls == RING:  # a painted, shaded annulus standing upright
    r = 9 * s
    cy = by - r
    dist = np.hypot(y - cy, x - bx)
    m = (dist <= r) & (dist >= 0.55 * r)
    img[m] = np.clip(_paint(rng) * (0.75 + 0.4 * np.cos((dist[m] - 0.77 * r) / r * 6))[:, None], 0, 255)
  elif cls == HEART:  # two discs over a triangle, painted
    r = 5 * s
    cy = by - 14 * s
    m = (_disc(hw, cy, bx - r, r) | _disc(hw, cy, bx + r, r)
         | _polygon(hw, [(cy + 0.4 * r, bx - 1.95 * r), (by, bx), (cy + 0.4 * r, bx + 1.95 * r)]))
    img[m] = _paint(rng)
  elif cls == PYRAMID:  # a sandstone triangle, its right face in shade
    ph, pw = 20 * s, 18 * s
    m = _polygon(hw, [(by, bx - pw), (by - ph, bx), (by, bx + pw)])
    img[m] = [205, 170, 100]
    img[m & (x > bx)] = [150, 120, 70]
  elif cls == BARREL:  # a wooden cylinder with two iron hoops
    bw, bh = 8 * s, 20 * s
    m = _rect(hw, by - bh, by, bx - bw, bx + bw)
    shade = 1 - 0.45 * ((x - bx) / bw) ** 2
    img[m] = np.clip(np.array([140, 85, 40]) * shade[m][:, None], 0, 255)
    img[m & ((np.abs(y - (by - 0.25 * bh)) < s) | (np.abs(y - (by - 0.75 * bh)) < s))] = [60, 60, 65]
  elif cls == ROCK:  # a grey lumpy blob, lit from the top left
    r = 9 * s
    cy = by - 0.8 * r
    angle = np.arctan2(y - cy, x - bx)
    edge = r * (1 + 0.18 * np.sin(3 * angle + rng.uniform(0, 6.28)) + 0.1 * np.sin(5 * angle))
    m = (np.hypot(y - cy, (x - bx) * 0.8) <= edge) & (y <= by)
    light = np.clip(1.15 - np.hypot(y - (cy - r / 2), x - (bx - r / 2)) / (2.2 * r), 0.5, 1.15)
    img[m] = np.clip(np.array([130, 128, 125]) * (light + 0.08 * rng.normal(0, 1, hw))[m][:, None], 0, 255)
  elif cls == UMBRELLA:  # a painted scalloped canopy on a dark pole
    r = 12 * s
    cy = by - 20 * s
    canopy = _disc(hw, cy, bx, r) & (y <= cy)
    for k in range(4):  # scallops along the rim
      canopy |= _disc(hw, cy, bx - 0.75 * r + 0.5 * r * k, 0.25 * r) & (y >= cy)
    pole = (np.abs(x - bx) <= 0.9 * s) & (y >= cy) & (y <= by)
    img[canopy] = _paint(rng)
    img[pole] = [40, 40, 40]
    m = canopy | pole
  else:
    raise ValueError(cls)
  label[m] = cls


def generate_scene(rng: np.random.Generator, hw=(160, 160)) -> tuple[np.ndarray, np.ndarray]:
  """One scene: image (H, W, 3) uint8 and label (H, W) uint8 with ids from vocab 'demo'."""
  h, w = hw
  horizon = int(h * rng.uniform(0.3, 0.55))
  indoor = rng.random() < 0.2
  top = WALL if indoor else SKY
  grounds = rng.choice(INDOOR_GROUNDS if indoor else OUTDOOR_GROUNDS, size=int(rng.integers(1, 3)),
                       replace=False)
  label = np.full(hw, top, np.uint8)
  xs = np.arange(w)
  rows = np.arange(h)[:, None]
  if not indoor and rng.random() < 0.3:  # a mountain range standing on the horizon
    peaks = np.zeros(w)
    for _ in range(rng.integers(1, 4)):
      px, height, half = rng.uniform(0, w), rng.uniform(0.3, 0.8) * horizon, rng.uniform(0.15, 0.4) * w
      peaks = np.maximum(peaks, height * (1 - np.abs(xs - px) / half))
    label[rows >= horizon - peaks.astype(int)] = MOUNTAIN
  edge = horizon + (3 * np.sin(xs / w * 6.28 * rng.uniform(0.5, 2) + rng.uniform(0, 6.28))).astype(int)
  label[rows >= edge] = grounds[0]
  if len(grounds) > 1:
    split = int(rng.uniform(horizon + 0.25 * (h - horizon), h - 0.2 * (h - horizon)))
    edge2 = split + (4 * np.sin(xs / w * 6.28 * rng.uniform(0.5, 2))).astype(int)
    label[rows >= edge2] = grounds[1]
  img = np.zeros((h, w, 3), np.float32)
  for cls in np.unique(label):
    m = label == cls
    ys = np.nonzero(m.any(1))[0]
    img[m] = texture(int(cls), rng, hw, (ys[0], ys[-1] + 1))[m]
  if not indoor:
    sky_top = lambda: (int(rng.uniform(0.1, 0.6) * horizon), int(rng.uniform(0.1, 0.9) * w))
    if rng.random() < 0.45:
      paint_object(SUN if rng.random() < 0.6 else MOON, rng, hw, *sky_top(), rng.uniform(0.8, 1.3), img, label)
    if rng.random() < 0.25:
      for _ in range(rng.integers(1, 4)):
        paint_object(STAR, rng, hw, *sky_top(), rng.uniform(0.7, 1.2), img, label)
    if rng.random() < 0.25:
      paint_object(KITE, rng, hw, *sky_top(), rng.uniform(0.8, 1.3), img, label)
  kinds = INDOOR_THINGS if indoor else GROUND_THINGS
  objects = [(int(rng.uniform(horizon + 6, h - 2)), int(rng.integers(10, w - 10)),
              int(rng.choice(kinds))) for _ in range(rng.integers(1, 6))]
  for by, bx, cls in sorted(objects):  # far (small y) first, near objects occlude them
    s = 0.8 + 1.5 * (by - horizon) / (h - horizon)  # perspective: nearer is larger
    paint_object(cls, rng, hw, by, bx, s, img, label)
  return np.clip(img, 0, 255).astype(np.uint8), label
