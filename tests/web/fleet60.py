"""A registry of sixty offices across Indonesia (approximate town coordinates) for the dashboard's
browser tests and its screenshot, built on the example registry's services."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOWNS = [  # (town, region, latitude, longitude)
    ("Banda Aceh", "Aceh", 5.55, 95.32), ("Lhokseumawe", "Aceh", 5.18, 97.15), ("Medan", "Sumatera Utara", 3.59, 98.67),
    ("Pematang Siantar", "Sumatera Utara", 2.96, 99.06), ("Sibolga", "Sumatera Utara", 1.74, 98.78),
    ("Padang", "Sumatera Barat", -0.95, 100.35), ("Bukittinggi", "Sumatera Barat", -0.31, 100.37),
    ("Pekanbaru", "Riau", 0.51, 101.45), ("Dumai", "Riau", 1.67, 101.45), ("Batam", "Kepulauan Riau", 1.13, 104.05),
    ("Tanjung Pinang", "Kepulauan Riau", 0.92, 104.45), ("Jambi", "Jambi", -1.61, 103.61),
    ("Palembang", "Sumatera Selatan", -2.99, 104.76), ("Bengkulu", "Bengkulu", -3.80, 102.27),
    ("Bandar Lampung", "Lampung", -5.43, 105.26), ("Pangkal Pinang", "Bangka Belitung", -2.13, 106.11),
    ("Jakarta Selatan", "DKI Jakarta", -6.26, 106.81), ("Jakarta Utara", "DKI Jakarta", -6.14, 106.88),
    ("Tangerang", "Banten", -6.18, 106.63), ("Serang", "Banten", -6.12, 106.15), ("Bogor", "Jawa Barat", -6.60, 106.80),
    ("Bandung", "Jawa Barat", -6.91, 107.61), ("Cirebon", "Jawa Barat", -6.71, 108.56),
    ("Semarang", "Jawa Tengah", -6.97, 110.42), ("Surakarta", "Jawa Tengah", -7.57, 110.82),
    ("Cilacap", "Jawa Tengah", -7.73, 109.01), ("Yogyakarta", "DI Yogyakarta", -7.80, 110.37),
    ("Surabaya", "Jawa Timur", -7.25, 112.75), ("Malang", "Jawa Timur", -7.98, 112.63),
    ("Kediri", "Jawa Timur", -7.82, 112.01), ("Jember", "Jawa Timur", -8.17, 113.70),
    ("Denpasar", "Bali", -8.65, 115.22), ("Mataram", "Nusa Tenggara Barat", -8.58, 116.12),
    ("Kupang", "Nusa Tenggara Timur", -10.18, 123.60), ("Maumere", "Nusa Tenggara Timur", -8.62, 122.21),
    ("Sambas", "Kalimantan Barat", 1.36, 109.30), ("Singkawang", "Kalimantan Barat", 0.91, 108.99),
    ("Pontianak", "Kalimantan Barat", -0.03, 109.34), ("Ketapang", "Kalimantan Barat", -1.85, 109.98),
    ("Palangka Raya", "Kalimantan Tengah", -2.21, 113.92), ("Banjarmasin", "Kalimantan Selatan", -3.32, 114.59),
    ("Samarinda", "Kalimantan Timur", -0.50, 117.15), ("Balikpapan", "Kalimantan Timur", -1.24, 116.85),
    ("Tarakan", "Kalimantan Utara", 3.30, 117.63), ("Nunukan", "Kalimantan Utara", 4.14, 117.66),
    ("Manado", "Sulawesi Utara", 1.47, 124.84), ("Bitung", "Sulawesi Utara", 1.44, 125.19),
    ("Gorontalo", "Gorontalo", 0.54, 123.06), ("Palu", "Sulawesi Tengah", -0.90, 119.87),
    ("Makassar", "Sulawesi Selatan", -5.14, 119.42), ("Parepare", "Sulawesi Selatan", -4.01, 119.62),
    ("Kendari", "Sulawesi Tenggara", -3.97, 122.51), ("Mamuju", "Sulawesi Barat", -2.68, 118.89),
    ("Ambon", "Maluku", -3.70, 128.18), ("Tual", "Maluku", -5.63, 132.75), ("Ternate", "Maluku Utara", 0.79, 127.38),
    ("Sorong", "Papua Barat Daya", -0.88, 131.26), ("Manokwari", "Papua Barat", -0.86, 134.08),
    ("Jayapura", "Papua", -2.53, 140.72), ("Merauke", "Papua Selatan", -8.49, 140.40),
]
MARKUP_NAME = '<img src=x onerror="window.pwned=1"><b>Kantor Uji</b> & "Co"'


def site_id(town: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", town.lower()).strip("-")


def registry() -> dict:
    """Sixty offices; the one in Tual carries markup in its name (it must render as text)."""
    reg = copy.deepcopy(yaml.safe_load((ROOT / "firmware_config/central/offices.yaml").read_text()))
    reg["offices"] = [{"id": site_id(t), "name": MARKUP_NAME if t == "Tual" else f"Kantor Imigrasi {t}",
                       "region": r, "latitude": lat, "longitude": lon,
                       "services": ["interview_biometrics", "passport_issuance"]} for t, r, lat, lon in TOWNS]
    assert len(reg["offices"]) == 60
    return reg
