"""JPEG decoding for the loaders: the one decoder of stored samples.

libjpeg-turbo on CPU (through torchvision), nvjpeg on CUDA; a batch of samples becomes
uint8 [n,3,H,W] with its city indices, and a sample that does not decode or has the
wrong size is named in the error.
"""

from __future__ import annotations

import warnings

import torch

from shards.tar import BAD_SHARD_ADVICE


def decode_jpegs(
    data: list[torch.Tensor], device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """JPEG bytes (uint8 [n] CPU tensors) -> RGB uint8 [3,H,W] tensors on `device`.

    The one decoder. On CUDA the whole list is decoded in one nvjpeg batch on the GPU;
    elsewhere libjpeg-turbo on this CPU core.
    """
    if not data:
        return []
    # imported on first use: torchvision pulls in torch._dynamo (~4 s of CPU on 2 cores),
    # which a process that never decodes (`msls --help`, `msls ui`, the quickstart's
    # driver) need not pay
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    with warnings.catch_warnings():  # torchvision 0.29 warns on every call (TorchCodec move)
        warnings.simplefilter("ignore", DeprecationWarning)
        if device.type == "cuda":
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        images = decode_jpeg(data, mode=ImageReadMode.RGB)
    return images if device.type == "cpu" else [i.to(device) for i in images]


def as_tensor(data: bytes | bytearray | memoryview) -> torch.Tensor:
    """A uint8 [n] view of writable bytes (a copy of read-only ones)."""
    if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly):
        data = bytearray(data)
    return (
        torch.frombuffer(data, dtype=torch.uint8)
        if len(data)
        else torch.empty(0, dtype=torch.uint8)
    )


def decode_batch(
    samples: list[tuple[str, bytes, int, str]], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples (key, jpg, cls, shard) -> uint8 [n,3,H,W], int64 [n]."""
    try:
        images = decode_jpegs([as_tensor(s[1]) for s in samples])
    except RuntimeError:
        for key, jpg, _, url in samples:  # find the culprit for the message
            try:
                decode_jpegs([as_tensor(jpg)])
            except RuntimeError as exc:
                message = f"{url}: {key}.jpg does not decode ({exc}); {BAD_SHARD_ADVICE}"
                raise ValueError(message) from exc
        raise
    width, height = size
    for image, (key, _, _, url) in zip(images, samples):
        if image.shape != (3, height, width):
            raise ValueError(
                f"{url}: {key}.jpg is {image.shape[2]}x{image.shape[1]}, expected "
                f"{width}x{height}; {BAD_SHARD_ADVICE}"
            )
    return torch.stack(images), torch.tensor([s[2] for s in samples], dtype=torch.int64)
