"""How the real-data fixture in this folder was made (run by hand; tests only read its output).

Source: the MNI ICBM 2009a symmetric template (T1 and grey/white-matter probability maps) as
shipped inside the nilearn wheel (``nilearn/datasets/data/``)::

    pip download --no-deps nilearn==0.14.1 -d /tmp/nl && cd /tmp/nl && unzip -q nilearn-*.whl
    python tests/data/mni152/make_fixture.py /tmp/nl/nilearn/datasets/data

Written here, at 2 mm (2×2×2 block means of the 1 mm data, geometry kept exact):
``t1_2mm.nii.gz`` (uint8 T1) and ``tissue_2mm.nii.gz`` (0 background/CSF, 1 grey matter,
2 white matter: the larger of the two probabilities where it is ≥ 0.5).

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express or
implied warranty.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def block_mean(volume: np.ndarray, factor: int = 2) -> np.ndarray:
    shape = [s // factor * factor for s in volume.shape]
    v = volume[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    return v.reshape(shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor).mean((1, 3, 5))


def main(source: Path, target: Path) -> None:
    t1 = nib.load(source / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = block_mean(np.asarray(nib.load(source / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").dataobj))
    wm = block_mean(np.asarray(nib.load(source / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj))
    affine = t1.affine.copy()
    affine[:3, :3] *= 2  # the voxel of a 2×2×2 block; its centre moves by half a 1 mm voxel
    affine[:3, 3] += t1.affine[:3, :3] @ np.full(3, 0.5)
    tissue = np.where(np.maximum(gm, wm) >= 127.5, np.where(gm >= wm, 1, 2), 0).astype(np.uint8)
    image = np.clip(np.round(block_mean(np.asarray(t1.dataobj))), 0, 255).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, affine), target / "t1_2mm.nii.gz")
    nib.save(nib.Nifti1Image(tissue, affine), target / "tissue_2mm.nii.gz")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
