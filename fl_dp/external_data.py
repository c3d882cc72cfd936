"""Datasets beyond the offline ones: ``hub:<name>`` (the Hugging Face hub, needs the network) and
``files:<path>`` (local CSV, Parquet, or an image folder with one subfolder per class), read with
the ``datasets`` library (Flower Datasets' own loader) and turned into the in-memory arrays every
client and the server use.

- images (an ``Image`` column): C x H x W float32, pixels mapped to [-1, 1]: one channel where
  every image of the train and test splits is grey (8- or 16-bit, an alpha channel dropped), else
  three (RGB; grey and palette images converted); tables: every
  numeric column but the label and id columns, as they are (standardise them beforehand: a
  SuperNode's own files and the server's test set must agree, so nothing here depends on a file);
- labels: ``label-column``: integers 0..K-1 as they are (what several files must use; K at most
  :data:`MAX_CLASSES`), other values numbered in sorted order; a row without a label is refused;
- features: an empty, NaN, infinite or beyond-float32 value is refused, naming its column;
- ids: ``id-column`` (optional): one natural client per value (``partitioner = "natural-id"``);
- splits: the data's own ``train`` / ``test`` splits, else a seeded 80 / 20 split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

HUB, FILES = "hub:", "files:"
#: integer labels are classes 0..max as they are, up to this many classes
MAX_CLASSES = 100_000


def is_external(name: str) -> bool:
    return name.startswith((HUB, FILES))


def load_external(
    name: str, seed: int, label_column: str = "label", id_column: str = "", held_out: bool = True
) -> tuple[Any, Any]:
    """((train x, y, groups), (test x, y, groups)) as tensors, and the number of classes, from ``name``;
    ValueError (or OSError) with the reason when it cannot be read. ``held_out=False``: every row in
    train (a SuperNode's own files), the test split empty."""
    splits = _read(name)
    if "train" in splits and "test" in splits and held_out:
        train, test = splits["train"], splits["test"]
    else:
        import datasets

        only = datasets.concatenate_datasets([splits[key] for key in splits]) if len(splits) > 1 else splits[next(iter(splits))]
        if held_out:
            parts = only.train_test_split(test_size=0.2, seed=seed)
            train, test = parts["train"], parts["test"]
        else:
            train, test = only, only.select([])
    for column in [label_column] + ([id_column] if id_column else []):
        if column not in train.column_names:
            key = "label-column" if column == label_column else "id-column"
            raise ValueError(f"{key} {column!r} is not a column of {name!r} (its columns: {', '.join(train.column_names)})")
    if type(train.features[label_column]).__name__ not in ("Value", "ClassLabel"):
        raise ValueError(
            f"label-column {label_column!r} of {name!r} holds {train.features[label_column]}, not one number or text a row"
        )
    values = set(_column(train, label_column)) | set(_column(test, label_column))
    if any(v is None or (isinstance(v, float) and not np.isfinite(v)) for v in values):
        raise ValueError(f"label-column {label_column!r} of {name!r} has rows without a label (empty or NaN)")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
        if max(values) >= MAX_CLASSES:
            raise ValueError(
                f"label-column {label_column!r} of {name!r} holds the integer label {max(values)}: integer labels are "
                f"classes 0..K-1, and K is at most {MAX_CLASSES:,}"
            )
        classes = list(range(int(max(values)) + 1))  # integer labels keep their meaning across files
    else:
        try:
            classes = sorted(values)
        except TypeError:  # mixed types: any fixed order will do
            classes = sorted(values, key=str)
    code = {value: i for i, value in enumerate(classes)}
    image_columns = [c for c, feature in train.features.items() if type(feature).__name__ == "Image"]
    if image_columns:
        train_images = train[image_columns[0]]
        test_images = test[image_columns[0]] if len(test) else []
        every_image = [*train_images, *test_images]
        if any(image is None for image in every_image):
            raise ValueError(f"column {image_columns[0]!r} of {name!r} has rows without an image")
        colour = not all(image.mode in _GREY_MODES for image in every_image)
        x_train = _images(train_images, image_columns[0], colour) * 2 - 1
        x_test = _images(test_images, image_columns[0], colour) * 2 - 1 if len(test) else x_train[:0]
    else:
        features = [
            c for c, f in train.features.items() if c not in (label_column, id_column) and getattr(f, "dtype", "") in _NUMERIC
        ]
        if not features:
            raise ValueError(f"{name!r} has no numeric feature column beside {label_column!r}")
        x_train, x_test = _table(train, features), _table(test, features)
    out = []
    for split, x in ((train, x_train), (test, x_test)):
        y = torch.tensor([code[v] for v in _column(split, label_column)], dtype=torch.long)
        groups = None
        if id_column:
            groups = np.asarray([str(v) for v in _column(split, id_column)])
        out.append((x, y, groups))
    return tuple(out), len(classes)


_NUMERIC = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64", "bool"}


def _read(name: str) -> Any:
    """The splits of ``name``; FileNotFoundError or ValueError (whatever the reader raised, as its reason)."""
    import datasets

    if name.startswith(HUB):
        source = name[len(HUB) :]
        if not source:
            raise ValueError("dataset 'hub:' names no dataset")
        try:
            return datasets.load_dataset(source)
        except Exception as err:  # noqa: BLE001 - network, missing dataset, auth: all say the same to the user
            raise ValueError(
                f"hub dataset {source!r} cannot be loaded (the hub needs the network): {type(err).__name__}: {err}"
            ) from None
    path = Path(name[len(FILES) :])
    if not path.exists():
        raise FileNotFoundError(f"dataset {name!r}: {path} does not exist")
    builder = "imagefolder" if path.is_dir() else {".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"dataset {name!r}: files: reads a .csv, a .parquet or an image folder, not {path.suffix or path.name}")
    files = {"data_dir": str(path)} if path.is_dir() else {"data_files": str(path)}
    try:
        return datasets.load_dataset(builder, **files)
    except Exception as err:  # noqa: BLE001 - a ragged row, a bad encoding, a broken image: the file is refused
        cause = err.__cause__ or err  # the datasets library wraps the parser's error
        raise ValueError(f"{path} cannot be read as {builder}: {type(cause).__name__}: {cause}"[:500]) from None


#: PIL modes of grey images, 8-bit (with or without alpha) and 16-bit
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _pixels(image: Any, colour: bool) -> np.ndarray:
    """``image`` (PIL) as H x W (grey) or H x W x 3 (colour) floats in [0, 1]: 16-bit grey over 65535,
    anything else through PIL's conversion to L or RGB (a palette's colours, not its indices)."""
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float32)
        if grey.size and not 0 <= grey.min() <= grey.max() <= 65535:
            raise ValueError(f"a {image.mode} image holds values outside 0..65535")
        grey /= 65535.0
        return np.repeat(grey[..., None], 3, axis=-1) if colour else grey
    if image.mode == "F":
        raise ValueError("32-bit float images have no fixed pixel range: save them as 8- or 16-bit images")
    return np.asarray(image.convert("RGB" if colour else "L"), dtype=np.float32) / 255.0


def _images(images: Any, column: str, colour: bool) -> torch.Tensor:
    arrays = [_pixels(image, colour) for image in images]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"images of different sizes (height, width) in column {column!r}: {sorted(sizes)[:3]}")
    stacked = np.stack(arrays)
    stacked = stacked.transpose(0, 3, 1, 2) if colour else stacked[:, None]
    return torch.from_numpy(np.ascontiguousarray(stacked))


def _column(split: Any, name: str) -> list[Any]:
    """Column ``name`` of a Dataset as a list, without ``split[name]``'s copy of every column's Features."""
    return split.select_columns([name])[name]


def _table(split: Any, columns: list[str]) -> torch.Tensor:
    if len(split) == 0:
        return torch.zeros(0, len(columns))
    # one conversion: each column lookup on a Dataset copies all its Features (minutes for 800 columns)
    frame = split.select_columns(columns).to_pandas()
    values = []
    for column in columns:
        # float64 first (an empty cell is NaN): a value beyond float32 is refused, not turned into inf
        value = np.asarray(frame[column], dtype=np.float64)
        bad = ~np.isfinite(value) | (np.abs(value) > np.finfo(np.float32).max)
        if bad.any():
            raise ValueError(f"feature column {column!r} has {int(bad.sum())} empty, NaN, infinite or out-of-float32 values")
        values.append(value.astype(np.float32))
    return torch.from_numpy(np.column_stack(values))
