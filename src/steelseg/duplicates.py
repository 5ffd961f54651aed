"""Near-duplicate images: perceptual hashes under flips and quarter turns, groups, split leaks.

A labelled set often holds the same picture more than once: a copy, a flipped or rotated copy
(augmented sets), or two frames of one defect. Split at random, such a pair can land one
image in train and the other in test, and the test score then measures memory, not skill.

* Each image is hashed by ``imagehash.phash`` (64 bits: the signs of the 8x8 lowest
  frequencies of its 32x32 DCT against their median) under each of the 8 flips and quarter
  turns (:data:`TRANSFORMS`), computed on one 32x32 thumbnail per image.
* Two images are near-duplicates when one of the 8 hashes of one is at most
  :data:`HASH_THRESHOLD` bits from the plain hash of the other (either way round).
* Groups are the connected components of that relation (union-find: a ~ b and b ~ c puts a,
  b and c in one group), computed by scipy on the sparse graph of near-duplicate pairs.
* :func:`split_leaks` says which groups a split puts on more than one side.

``HASH_THRESHOLD = 8`` was set on SD-saliency-900 (900 real 200x200 strip-steel images): at 8
bits the 5 pairs found are all the same picture (a copy, two quarter turns, a flip, one
more); at 10 bits 5 more pairs join, of which 3 are different pictures of a similar texture
(docs/datasets.md). Two random pictures are about 32 bits apart. Pairwise distances are
computed as matrix products of the bit vectors, in blocks: 900 images take well under a
second once hashed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.io import read_grey

#: Hamming distance (bits of 64) up to which two images are near-duplicates
HASH_THRESHOLD = 8
HASH_BITS = 64  # imagehash.phash's default: hash_size 8
THUMB = 32  # phash's DCT size (hash_size 8 x highfreq_factor 4)
#: The 8 flips and quarter turns (the dihedral group of the square), by name; each acts on an
#: (H, W) array
TRANSFORMS = {
    "identity": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "transpose": lambda a: a.T,
    "antitranspose": lambda a: np.rot90(a, 2).T,
}
BLOCK = 256  # images whose 8 hashes are compared with every plain hash at once (memory bound)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A grey image squashed to phash's 32x32, as imagehash resizes it (Lanczos, by Pillow).

    Shape:
        image: uint8 (H, W). Returns uint8 (32, 32).
    """
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((THUMB, THUMB), Image.Resampling.LANCZOS))


def thumbnail_hashes(thumb: np.ndarray) -> np.ndarray:
    """imagehash's phash of a 32x32 thumbnail under each of :data:`TRANSFORMS`.

    A flip or quarter turn of an image, squashed to 32x32, is that flip or turn of its
    thumbnail, so one thumbnail per image serves all 8.

    Shape:
        thumb: uint8 (32, 32). Returns bool (8, 64).
    """
    import imagehash
    from PIL import Image

    return np.stack(
        [
            imagehash.phash(Image.fromarray(np.ascontiguousarray(t(thumb)))).hash.ravel()
            for t in TRANSFORMS.values()
        ]
    )


def image_hashes(
    paths: Sequence[str | os.PathLike], workers: int | None = None
) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
    """The hashes of image files under the 8 transforms, and each image's size.

    Args:
        paths: Image files.
        workers: Reader threads (None: up to 8; decoding releases the GIL).

    Returns:
        (bool (N, 8, 64) hashes, (height, width) per image); an unreadable image has all-zero
        hashes and size None (:func:`near_duplicate_groups` leaves it alone).
    """

    def one(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int] | None]:
        try:
            image = read_grey(path)
        except ValueError:  # ImageError: the caller names unreadable images by their size
            return np.zeros((len(TRANSFORMS), HASH_BITS), bool), None
        return thumbnail_hashes(thumbnail(image)), image.shape

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        done = list(pool.map(one, paths))
    hashes = np.stack([h for h, _ in done]) if done else np.zeros((0, 8, HASH_BITS), bool)
    return hashes, [s for _, s in done]


def near_duplicate_pairs(
    hashes: np.ndarray, threshold: int = HASH_THRESHOLD, valid: np.ndarray | None = None
) -> np.ndarray:
    """Pairs of near-duplicate images: one's hash under some transform within ``threshold``
    bits of the other's plain hash.

    Args:
        hashes: bool (N, 8, 64), from :func:`image_hashes`; transform 0 is the identity.
        threshold: The largest Hamming distance of a pair.
        valid: bool (N,): the images to compare (None: all).

    Returns:
        int (P, 2) pairs ``i < j``, each once, sorted.
    """
    n, t, bits = hashes.shape
    if valid is None:
        valid = np.ones(n, bool)
    plain = hashes[:, 0].astype(np.float32)  # (N, 64)
    plain_ones = plain.sum(1)
    found = []
    for lo in range(0, n, BLOCK):
        block = hashes[lo : lo + BLOCK].reshape(-1, bits).astype(np.float32)  # (B*8, 64)
        # Hamming distance of 0/1 vectors: |a| + |b| - 2 a.b, exact in float32
        dist = block.sum(1)[:, None] + plain_ones[None] - 2.0 * (block @ plain.T)  # (B*8, N)
        dist = dist.reshape(-1, t, n).min(1)  # (B, N): the closest transform
        i, j = np.nonzero(dist <= threshold)
        i += lo
        keep = (i != j) & valid[i] & valid[j]
        found.append(np.stack([np.minimum(i, j)[keep], np.maximum(i, j)[keep]], 1))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), int)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def near_duplicate_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group labels: connected components of the near-duplicate pairs (union-find).

    Returns:
        int (N,): a group number per image; images without a near-duplicate are alone in
        theirs.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def groups_of(image_ids: Sequence[str], labels: np.ndarray) -> list[list[str]]:
    """The groups of more than one image, as lists of ImageIds, largest first, then by name."""
    members: dict[int, list[str]] = {}
    for iid, g in zip(image_ids, labels):
        members.setdefault(int(g), []).append(iid)
    groups = [sorted(m) for m in members.values() if len(m) > 1]
    return sorted(groups, key=lambda m: (-len(m), m[0]))


def find_groups(
    folder: str | os.PathLike, image_ids: Sequence[str], threshold: int = HASH_THRESHOLD
) -> dict[str, Any]:
    """Near-duplicate groups of images in a folder.

    Args:
        folder: The folder holding the images.
        image_ids: Their file names.
        threshold: See :data:`HASH_THRESHOLD`.

    Returns:
        ``{"groups": [[ImageId, ...], ...], "pairs": [[a, b, bits], ...], "sizes": [(h, w)
        or None, ...], "unreadable": [...], "threshold": bits}``; groups of 2+ images,
        largest first; a pair's bits: the distance under its closest transform.
    """
    folder = Path(folder)
    hashes, sizes = image_hashes([folder / i for i in image_ids])
    valid = np.array([s is not None for s in sizes], bool)
    pairs = near_duplicate_pairs(hashes, threshold, valid)
    labels = near_duplicate_groups(len(image_ids), pairs)
    bits = [pair_distance(hashes[a], hashes[b]) for a, b in pairs]
    return {
        "groups": groups_of(image_ids, labels),
        "pairs": [[image_ids[a], image_ids[b], d] for (a, b), d in zip(pairs, bits)],
        "sizes": sizes,
        "unreadable": [i for i, ok in zip(image_ids, valid) if not ok],
        "threshold": int(threshold),
    }


def pair_distance(a: np.ndarray, b: np.ndarray) -> int:
    """The Hamming distance of two images' hashes under the closest transform, either way
    round.

    Shape:
        a, b: bool (8, 64), from :func:`image_hashes`.
    """
    return int(min((a != b[0]).sum(1).min(), (b != a[0]).sum(1).min()))


# ----------------------------------------------------------------------------- splits
def split_leaks(groups: Sequence[Sequence[str]], split: Mapping[str, str]) -> dict[str, Any]:
    """What a split leaks: the near-duplicate groups it puts on more than one side.

    Args:
        groups: Near-duplicate groups (ImageIds), e.g. ``find_groups(...)["groups"]``.
        split: {ImageId: side} (``train``, ``val``, ``test``); images it lacks are ignored.

    Returns:
        ``{"groups": n groups across sides, "images": n images in them, "leaked": n val/test
        images with a near-duplicate in train, "across": [{side: [ImageId, ...]}, ...]}``.
    """
    across, images, leaked = [], 0, 0
    for group in groups:
        sides: dict[str, list[str]] = {}
        for iid in group:
            if iid in split:
                sides.setdefault(split[iid], []).append(iid)
        if len(sides) < 2:
            continue
        across.append(dict(sorted(sides.items())))
        images += sum(len(v) for v in sides.values())
        if "train" in sides:
            leaked += sum(len(v) for s, v in sides.items() if s != "train")
    return {"groups": len(across), "images": images, "leaked": leaked, "across": across}


def keep_groups_together(
    sides: np.ndarray, labels: np.ndarray, order: Sequence[str]
) -> tuple[np.ndarray, int]:
    """Move images so that every near-duplicate group is on one side of a split.

    Each group on several sides goes wholly to the side most of its images are on; a tie goes
    to the side furthest below its own count (then the earlier of ``order``), so the counts
    stay near the asked ones. Only the images of such groups move: the rest of the split, and
    its stratification, stays as it was.

    Args:
        sides: The side of each image (e.g. ``train``/``val``/``test``).
        labels: Each image's group (:func:`near_duplicate_groups`).
        order: The sides, in order of preference for ties.

    Returns:
        (the new sides, how many images moved).
    """
    sides = np.asarray(sides, dtype=object).copy()
    target = {s: int((sides == s).sum()) for s in order}
    moved = 0
    for g in np.flatnonzero(np.bincount(labels) > 1):  # groups of 2+ images
        members = np.flatnonzero(labels == g)
        present = [s for s in order if (sides[members] == s).any()]
        if len(present) < 2:
            continue
        count = {s: int((sides[members] == s).sum()) for s in present}
        now = {s: int((sides == s).sum()) for s in present}

        def rank(s: str, count=count, now=now) -> tuple[int, int, int]:
            return (-count[s], now[s] - target[s], order.index(s))

        side = min(present, key=rank)
        moved += int((sides[members] != side).sum())
        sides[members] = side
    return sides, moved
