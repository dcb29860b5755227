"""The registered MLflow model `msls-dcgan`: the EMA generator as a pyfunc, from code.

MLflow's "models from code": this file itself is logged with the model and run again
on load (`mlflow.pyfunc.load_model`, `mlflow models serve`), and its one artifact is
`generator.pt`, an msls checkpoint read with `weights_only=True`. Nothing is pickled,
so loading runs no code but this file and the `gan`/`shards` packages logged beside it.
It imports neither Prefect nor anything under `tasks/`.

Request: a table, one row per request (pandas DataFrame, or over HTTP
`{"dataframe_records": [{"n": 4, "seed": 0}]}`):

    n           long, required   images to draw, 1..MAX_IMAGES (MAX_TOTAL over all rows)
    seed        long, optional   latent seed (default 0): the same seed, the same images
    truncation  double, optional redraw every |z| > truncation (sharper, less varied)
    city        string, optional a city of a conditional model's dataset (`msls sample
                                 --city`); left out: every city in turn. An unconditional
                                 model refuses it; an unknown name lists the known ones.
    night       boolean, optional night frames (`msls sample --night`; default false): a
                                 model trained with `--conditional city,night` only.

Response: a table, one row per image, in request order:

    request  long    the row of the request it answers
    index    long    its number within that request (image `index` of seed `seed`)
    png      string  the image as a base64 PNG, RGB, resolution x resolution pixels

    Image.open(io.BytesIO(base64.b64decode(row["png"])))

`generate` in `gan.sampling` draws the same images from the checkpoint for the same
seed: latents come from a seeded CPU generator.
"""

from __future__ import annotations

import base64
import io
import math

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import ColSpec, Schema
from PIL import Image

ARTIFACT = "generator"  # the key of generator.pt in the model's artifacts
MAX_IMAGES = 256  # per request row
MAX_TOTAL = 1024  # per call: a 64 px PNG is ~8 KB, so a response stays under ~10 MB

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("long", "n"),
            ColSpec("long", "seed", required=False),
            ColSpec("double", "truncation", required=False),
            ColSpec("string", "city", required=False),
            ColSpec("boolean", "night", required=False),
        ]
    ),
    outputs=Schema(
        [ColSpec("long", "request"), ColSpec("long", "index"), ColSpec("string", "png")]
    ),
)
INPUT_EXAMPLE = pd.DataFrame({"n": [2], "seed": [0]})


class GeneratorModel(PythonModel):
    """The EMA generator of one training run, on the CPU, drawing PNGs on request."""

    def load_context(self, context: PythonModelContext) -> None:
        from gan.sampling import load_generator

        self.generator, self.config, _ = load_generator(context.artifacts[ARTIFACT], "cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from gan.sampling import city_labels, generate

        requests = parse_requests(model_input)
        rows = []
        for number, (n, seed, truncation, city, night) in enumerate(requests):
            try:
                labels = city_labels(self.config, n, city, night)
            except ValueError as exc:
                _refuse(str(exc))
            images = generate(self.generator, n, seed=seed, truncation=truncation, labels=labels)
            rows += [(number, i, png_base64(image)) for i, image in enumerate(images)]
        return pd.DataFrame(rows, columns=["request", "index", "png"])


def parse_requests(frame: pd.DataFrame) -> list[tuple[int, int, float | None, str, bool]]:
    """[(n, seed, truncation or None, city or "", night), ...] from the request table; one
    clear error if bad."""
    requests = []
    for row in frame.to_dict("records"):
        n, seed, truncation = row["n"], _given(row.get("seed")), _given(row.get("truncation"))
        city, night = _given(row.get("city")) or "", bool(_given(row.get("night")) or False)
        if not 1 <= n <= MAX_IMAGES:
            _refuse(f"n must be 1..{MAX_IMAGES} per request row, got {n}")
        if truncation is not None and truncation <= 0:
            _refuse(f"truncation must be > 0 (or left out), got {truncation}")
        requests.append((int(n), int(seed or 0), truncation, str(city), night))
    total = sum(request[0] for request in requests)
    if total > MAX_TOTAL:
        _refuse(f"at most {MAX_TOTAL} images per call, asked for {total}; split the request")
    return requests


def png_base64(image) -> str:
    """uint8 [3, H, W] tensor -> base64 text of a PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _given(value):
    """None for a missing optional column (pandas fills it with NaN or None)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _refuse(message: str) -> None:
    # INVALID_PARAMETER_VALUE: the scoring server answers 400 with this message
    raise MlflowException(f"msls-dcgan request: {message}", error_code=INVALID_PARAMETER_VALUE)


mlflow.models.set_model(GeneratorModel())
