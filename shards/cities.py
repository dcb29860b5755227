"""MSLS's cities: their folder names, their order in the distribution, where they are."""

from __future__ import annotations

# (lat, lon) of each city; the names and order are mapillary_sls's default_cities.
TRAIN_VAL_CENTRES = {
    "trondheim": (63.43, 10.40), "london": (51.51, -0.13), "boston": (42.36, -71.06),
    "melbourne": (-37.81, 144.96), "amsterdam": (52.37, 4.90), "helsinki": (60.17, 24.94),
    "tokyo": (35.68, 139.69), "toronto": (43.65, -79.38), "saopaulo": (-23.55, -46.63),
    "moscow": (55.76, 37.62), "zurich": (47.37, 8.54), "paris": (48.86, 2.35),
    "bangkok": (13.76, 100.50), "budapest": (47.50, 19.04), "austin": (30.27, -97.74),
    "berlin": (52.52, 13.40), "ottawa": (45.42, -75.70), "phoenix": (33.45, -112.07),
    "goa": (15.50, 73.83), "amman": (31.95, 35.93), "nairobi": (-1.29, 36.82),
    "manila": (14.60, 120.98), "cph": (55.68, 12.57), "sf": (37.77, -122.42),
}  # fmt: skip
TEST_CENTRES = {
    "miami": (25.76, -80.19), "athens": (37.98, 23.73), "buenosaires": (-34.60, -58.38),
    "stockholm": (59.33, 18.07), "bengaluru": (12.97, 77.59), "kampala": (0.35, 32.58),
}  # fmt: skip
ALL_TRAIN_VAL_CITIES = tuple(TRAIN_VAL_CENTRES)  # 22 train cities, then val: cph, sf
TEST_CITIES = tuple(TEST_CENTRES)
# sf is one of MSLS's own val cities: the default source then exercises the ood split.
DEFAULT_CITIES = (
    "austin", "bangkok", "budapest", "helsinki", "melbourne", "moscow", "phoenix", "sf",
)  # fmt: skip
