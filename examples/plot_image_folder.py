"""
=============================================
Training on your own images from a folder
=============================================

Both estimators read images from disk as well as from arrays: a folder, a
list of file paths, PIL images or a torch ``Dataset``, decoded a batch at a
time while training. This example writes a small image collection to a
temporary folder, in the usual one-subfolder-per-class layout, trains a
:class:`~skcueco.CueCoEmbedder` on the folder without using its class names,
and then checks what the embeddings learned from the classes it never saw.

The images are patches of the two photographs that ship with scikit-learn
(a temple in China and a flower), so nothing is downloaded. Everything it writes is deleted at the end.
"""

# %%
# Writing an image folder
# -----------------------
#
# 150 square patches of random size and position are cut from each photograph
# and saved as PNG files: ``china/0000.png``, ..., ``flower/0000.png``, ...
# Your own images would already be in such folders (any format Pillow reads,
# of any size).

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from skcueco import CueCoEmbedder, ImageSource

workdir = tempfile.TemporaryDirectory()
root = Path(workdir.name) / "photos"
rng = np.random.default_rng(0)
photos = load_sample_images()
for name, photo in zip(("china", "flower"), photos.images):
    (root / name).mkdir(parents=True)
    height, width, _ = photo.shape
    for i in range(150):
        side = int(rng.integers(48, 160))
        top, left = rng.integers(0, height - side), rng.integers(0, width - side)
        patch = photo[top:top + side, left:left + side]
        Image.fromarray(patch).save(root / name / f"{i:04d}.png")
print(f"{sum(1 for _ in root.rglob('*.png'))} PNG files in {root}")

# %%
# Reading the folder
# ------------------
#
# :class:`~skcueco.ImageSource` reads the folder lazily: it lists the files,
# opens only the first one (for its colour mode), and decodes the others when
# they are needed. ``image_size`` fits every image to one size, scaling it to
# cover the size and cropping the centre. The subfolder names become
# ``classes`` and ``targets``, which this example keeps for checking only.

images = ImageSource(root, image_size=24)
print(f"shape {images.shape} ({images.image_size[0]}x{images.image_size[1]} {images.mode}), "
      f"classes {images.classes}")

fig, axes = plt.subplots(2, 8, figsize=(8, 2.3), layout="constrained")
for ax, index in zip(axes.flat, [*range(8), *range(150, 158)]):
    ax.imshow(images[index].reshape(24, 24, 3))
    ax.set_title(images.classes[images.targets[index]], fontsize=8)
    ax.axis("off")
plt.show()

# %%
# Training on the folder
# ----------------------
#
# The folder itself can be passed to ``fit``: ``CueCoEmbedder(image_size=24)
# .fit(str(root))`` reads it the same way. Images under 32 pixels get the
# small CNN backbone, and RGB images the colour augmentations (crops, flips,
# colour jitter, grayscale). ``num_workers`` would decode the files in
# background processes; these small PNG files decode fast enough without.

embedder = CueCoEmbedder(max_epochs=15, batch_size=64, hidden_dim=256, n_clusters=4,
                         cluster_warmup=3, random_state=0)
embedder.fit(images)
print(f"Trained {embedder.n_iter_} epochs on {embedder.device_}; "
      f"embeddings of {len(embedder.get_feature_names_out())} values")

# %%
# What the embeddings know about the classes
# ------------------------------------------
#
# The labels now score what was learned without them: a cross-validated
# logistic regression on the embeddings against the same on the raw pixels.
# Each patch comes from one of two photographs with different colours and
# textures, but the patches vary in scale and position. The embeddings,
# trained to ignore crops and colour changes, separate the two photographs
# better than the pixels do, with 256 values (128 features and a 128-value
# projection) instead of 1,728.

Z = embedder.transform(images)
pixels = images[np.arange(len(images))] / 255.0
probe = LogisticRegression(max_iter=3000)
print(f"CueCo embeddings: accuracy {cross_val_score(probe, Z, images.targets).mean():.3f}")
print(f"Raw pixels:       accuracy {cross_val_score(probe, pixels, images.targets).mean():.3f}")

# %%
# New images, given as file paths
# -------------------------------
#
# ``transform`` and ``predict`` take new images in any of the accepted forms,
# here a list of paths; they are fitted to the training size. The images of
# each cluster that ``predict`` finds show what the clusters stand for.

new_files = sorted(root.rglob("*.png"))[::15]
clusters = embedder.predict([str(path) for path in new_files])
for cluster in np.unique(clusters):
    members = [path.parent.name for path, c in zip(new_files, clusters) if c == cluster]
    print(f"cluster {cluster}: {len(members)} images, "
          f"{members.count('china')} china / {members.count('flower')} flower")

workdir.cleanup()
