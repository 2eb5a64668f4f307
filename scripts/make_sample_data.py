"""Write the synthetic demo datasets (fixed seed, so reruns produce the same files).

python scripts/make_sample_data.py  → cli/allmende_cli/sample_data/{kaiserslautern/parking-permits.csv,
sankt-wendel/recycling-points.json}. Every name and plate in them is invented.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "cli" / "allmende_cli" / "sample_data"
DISTRICTS = ["Innenstadt", "Betzenberg", "Lämmchesberg", "Erfenbach", "Siegelbach"]
FIRST = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hannes", "Ida", "Jonas"]
LAST = ["Becker", "Schmitt", "Wagner", "Hoffmann", "Koch", "Richter", "Klein", "Wolf"]


def permits(rng: random.Random) -> None:
    path = OUT / "kaiserslautern" / "parking-permits.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["permit_id", "holder", "plate", "district", "zone", "kind", "valid_until"])
        for i in range(1, 41):
            letters = "".join(rng.choice("ABCDEFGHKLMNPRSTUVWXYZ") for _ in range(2))
            w.writerow(
                [
                    f"KL-{i:04d}",
                    f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                    f"KL-{letters} {rng.randint(10, 9999)}",
                    rng.choice(DISTRICTS),
                    f"Z{rng.randint(1, 6)}",
                    rng.choice(["resident", "resident", "business", "care"]),
                    f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                ]
            )


def recycling(rng: random.Random) -> None:
    kinds = ["glass", "paper", "textiles", "electronics"]
    items = [
        {
            "id": f"wnd-rp-{i:02d}",
            "street": f"{rng.choice(['Bahnhofstraße', 'Brühlstraße', 'Mommstraße', 'Tholeyer Straße'])} {rng.randint(1, 80)}",
            "kinds": sorted(rng.sample(kinds, rng.randint(1, 3))),
            "containers": rng.randint(1, 6),
            "accessible": rng.random() < 0.7,
            "emptied_at": f"2026-11-{rng.randint(1, 21):02d}T0{rng.randint(6, 9)}:00:00Z",
        }
        for i in range(1, 13)
    ]
    (OUT / "sankt-wendel" / "recycling-points.json").write_text(
        json.dumps(items, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    rng = random.Random(2026)
    permits(rng)
    recycling(rng)
