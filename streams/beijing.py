"""The Beijing 2022 Olympic team pursuit tournaments as recorded feeds.

    python -m streams.beijing [--out DIR]   # write the feeds (default: streams/feeds)
    python -m streams.beijing --check       # exit 1 if the committed feeds are stale

Built with ``streams.sim`` from the official results (hundredths). Each
official time is given a fixed microsecond target whose truncation gives it
(2:53.61 -> 173614xxx us), every team of a round with a different thousandths
digit, so a pipeline that rounds instead of truncating gets it wrong.

Files (``streams/feeds``):
- ``beijing2022-tp-women.jsonl``: venue NSO, the records in force (OR JPN
  2:53.89, WR JPN 2:50.76), the 10 races: QF1-QF4 (2022-02-12), SF1-SF2 and
  finals D, C, B, A (2022-02-15).
- ``beijing2022-tp-men.jsonl``: the same for the men (QF 2022-02-13).
- ``beijing2022-tpw-final-a.jsonl``: the women's final A alone, with the
  records in force then (OR JPN 2:53.61 set 2022-02-12 at NSO). Its race
  skates the same crossings and reads as in the women's file (seq numbers
  and heartbeats differ).

The story: in the women's final A Japan led Canada until Nana Takagi fell
in the last inner curve (2370 m), lost about 11 s, got up and finished; as
Japan's third skater her time is Japan's: Canada 2:53.44 (Olympic record),
Japan 3:04.47. The referee confirms the fall (FALL) before OFFICIAL.

``expected_results()`` gives every race's official times (competitor ->
time string) for tests; ``expected_records()`` the records set;
``expected_classification(gender)`` the final places.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .sim import (S, CompetitorSpec, Decision, Fall, Pacing, RaceSpec, RecordRef, SimFeed,
                  SimOptions, SkaterSpec, VenueSpec, simulate)

FEEDS_DIR = Path(__file__).resolve().parent / "feeds"
WOMEN_FILE = "beijing2022-tp-women.jsonl"
MEN_FILE = "beijing2022-tp-men.jsonl"
FINAL_A_FILE = "beijing2022-tpw-final-a.jsonl"

VENUE = VenueSpec("NSO", "National Speed Skating Oval, Beijing")
CST = timezone(timedelta(hours=8))  # Beijing time; t_us is UTC

COMPETITION, LEVEL, DISTANCE_W, DISTANCE_M = "OWG2022", "OWG", 2400, 3200

TEAM_NAMES = {
    "CAN": "Canada", "JPN": "Japan", "NED": "Netherlands", "ROC": "ROC", "CHN": "China",
    "NOR": "Norway", "POL": "Poland", "BLR": "Belarus", "USA": "United States",
    "KOR": "Republic of Korea", "ITA": "Italy",
}
# Transponder numbers: <gender 4|5><nation 2 digits><skater 2 digits><ankle 1|2>.
NATION_NO = {"CAN": 10, "JPN": 11, "NED": 12, "ROC": 13, "CHN": 14, "NOR": 15, "POL": 16,
             "BLR": 17, "USA": 18, "KOR": 19, "ITA": 20}

ROSTERS = {
    "W": {
        "CAN": [("CAN-BLONDIN", "Ivanie Blondin"), ("CAN-MALTAIS", "Valérie Maltais"),
                ("CAN-WEIDEMANN", "Isabelle Weidemann")],
        "JPN": [("JPN-SATO", "Ayano Sato"), ("JPN-TAKAGI-M", "Miho Takagi"),
                ("JPN-TAKAGI-N", "Nana Takagi")],
        "NED": [("NED-SCHOUTEN", "Irene Schouten"), ("NED-DEJONG", "Antoinette de Jong"),
                ("NED-WUST", "Ireen Wüst"), ("NED-GROENEWOUD", "Marijke Groenewoud")],
        "ROC": [("ROC-GOLUBEVA", "Elizaveta Golubeva"), ("ROC-LALENKOVA", "Evgeniia Lalenkova"),
                ("ROC-VORONINA", "Natalia Voronina")],
        "CHN": [("CHN-ADAKE", "Ahenaer Adake"), ("CHN-HAN-M", "Han Mei"),
                ("CHN-YIN-Q", "Yin Qi")],
        "NOR": [("NOR-WIKLUND", "Ragne Wiklund"), ("NOR-NJATUN", "Ida Njåtun"),
                ("NOR-HAUGEN", "Sofie Karoline Haugen")],
        "POL": [("POL-CZERWONKA", "Natalia Czerwonka"), ("POL-BOSIEK", "Karolina Bosiek"),
                ("POL-CZYSZCZON", "Magdalena Czyszczoń")],
        "BLR": [("BLR-ZUEVA", "Marina Zueva"), ("BLR-MIKHAILAVA", "Tatsiana Mikhailava"),
                ("BLR-NIFANTAVA", "Hanna Nifantava")],
    },
    "M": {
        "NOR": [("NOR-ENGEBRATEN", "Hallgeir Engebråten"), ("NOR-KONGSHAUG", "Peder Kongshaug"),
                ("NOR-PEDERSEN", "Sverre Lunde Pedersen")],
        "ROC": [("ROC-ALDOSHKIN", "Daniil Aldoshkin"), ("ROC-TROFIMOV", "Sergei Trofimov"),
                ("ROC-ZAKHAROV", "Ruslan Zakharov")],
        "USA": [("USA-DAWSON", "Casey Dawson"), ("USA-LEHMAN", "Emery Lehman"),
                ("USA-CEPURAN", "Ethan Cepuran")],
        "NED": [("NED-ROEST", "Patrick Roest"), ("NED-BOSKER", "Marcel Bosker"),
                ("NED-SNELLINK", "Beau Snellink")],
        "CAN": [("CAN-BLOEMEN", "Ted-Jan Bloemen"), ("CAN-BELCHOS", "Jordan Belchos"),
                ("CAN-HOWE", "Connor Howe")],
        "KOR": [("KOR-CHUNG-J", "Chung Jae-won"), ("KOR-LEE-S", "Lee Seung-hoon"),
                ("KOR-KIM-M", "Kim Min-seok")],
        "ITA": [("ITA-GHIOTTO", "Davide Ghiotto"), ("ITA-GIOVANNINI", "Andrea Giovannini"),
                ("ITA-MALFATTI", "Michele Malfatti")],
        "CHN": [("CHN-NING-Z", "Ning Zhongyan"), ("CHN-WANG-H", "Wang Haotian"),
                ("CHN-LIU-A", "Liu An")],
    },
}


@dataclass(frozen=True)
class Heat:
    race_id: str
    local: str  # Beijing time of the scheduled start, "YYYY-MM-DD HH:MM:SS.ffffff"
    group: str
    places: tuple[int, ...] | None
    teams: tuple[tuple[str, str, int], ...]  # (nation, official time, target elapsed us), lane 0 then 200
    roster: dict[str, tuple[str, ...]] | None = None  # nation -> skater_ids, when not the first three


# Official times and the chosen microsecond targets (truncation gives the official time).
WOMEN = (
    Heat("OWG2022-TPW-QF1", "2022-02-12 15:30:14.208533", "OWG2022-TPW-QF", None,
         (("POL", "3:02.05", 182_059_413), ("BLR", "3:02.89", 182_892_760))),
    Heat("OWG2022-TPW-QF2", "2022-02-12 15:39:09.617204", "OWG2022-TPW-QF", None,
         (("CHN", "2:59.63", 179_637_052), ("NOR", "3:00.28", 180_285_911))),
    Heat("OWG2022-TPW-QF3", "2022-02-12 15:48:11.034871", "OWG2022-TPW-QF", None,
         (("NED", "2:57.26", 177_263_999), ("CAN", "2:53.97", 173_978_246))),
    Heat("OWG2022-TPW-QF4", "2022-02-12 15:57:12.752690", "OWG2022-TPW-QF", None,
         (("ROC", "2:57.66", 177_661_308), ("JPN", "2:53.61", 173_614_372))),
    Heat("OWG2022-TPW-SF1", "2022-02-15 15:30:10.431177", "OWG2022-TPW-SF", None,
         (("JPN", "2:58.93", 178_936_184), ("ROC", "2:59.84", 179_840_000))),
    Heat("OWG2022-TPW-SF2", "2022-02-15 15:39:13.905316", "OWG2022-TPW-SF", None,
         (("CAN", "2:54.96", 174_967_529), ("NED", "2:55.94", 175_942_817))),
    Heat("OWG2022-TPW-FD", "2022-02-15 16:30:12.118402", "OWG2022-TPW-FD", (7, 8),
         (("BLR", "3:01.19", 181_196_638), ("POL", "3:03.19", 183_194_075))),
    Heat("OWG2022-TPW-FC", "2022-02-15 16:49:09.560937", "OWG2022-TPW-FC", (5, 6),
         (("CHN", "2:58.34", 178_349_201), ("NOR", "3:02.15", 182_150_466))),
    Heat("OWG2022-TPW-FB", "2022-02-15 17:08:11.287745", "OWG2022-TPW-FB", (3, 4),
         (("NED", "2:56.86", 176_868_539), ("ROC", "2:58.65", 178_653_120)),
         roster={"NED": ("NED-SCHOUTEN", "NED-WUST", "NED-GROENEWOUD")}),
    Heat("OWG2022-TPW-FA", "2022-02-15 17:27:13.644019", "OWG2022-TPW-FA", (1, 2),
         (("CAN", "2:53.44", 173_445_287), ("JPN", "3:04.47", 184_471_906))),
)

MEN = (
    Heat("OWG2022-TPM-QF1", "2022-02-13 15:30:11.904417", "OWG2022-TPM-QF", None,
         (("CHN", "3:52.25", 232_258_630), ("ITA", "3:42.04", 222_041_295))),
    Heat("OWG2022-TPM-QF2", "2022-02-13 15:40:13.317052", "OWG2022-TPM-QF", None,
         (("KOR", "3:41.89", 221_897_014), ("CAN", "3:40.18", 220_184_562))),
    Heat("OWG2022-TPM-QF3", "2022-02-13 15:50:10.728613", "OWG2022-TPM-QF", None,
         (("NED", "3:38.90", 218_902_447), ("ROC", "3:38.67", 218_679_999))),
    Heat("OWG2022-TPM-QF4", "2022-02-13 16:00:12.090384", "OWG2022-TPM-QF", None,
         (("USA", "3:37.51", 217_513_808), ("NOR", "3:37.47", 217_476_153))),
    Heat("OWG2022-TPM-SF1", "2022-02-15 15:48:12.651920", "OWG2022-TPM-SF", None,
         (("NOR", "3:38.28", 218_285_371), ("NED", "3:39.62", 219_629_084))),
    Heat("OWG2022-TPM-SF2", "2022-02-15 15:58:10.276145", "OWG2022-TPM-SF", None,
         (("ROC", "3:36.62", 216_620_733), ("USA", "3:37.05", 217_057_260))),
    Heat("OWG2022-TPM-FD", "2022-02-15 16:39:11.830562", "OWG2022-TPM-FD", (7, 8),
         (("ITA", "3:42.64", 222_642_518), ("CHN", "3:47.73", 227_735_940))),
    Heat("OWG2022-TPM-FC", "2022-02-15 16:58:13.472209", "OWG2022-TPM-FC", (5, 6),
         (("CAN", "3:40.97", 220_979_105), ("KOR", "3:42.42", 222_421_677))),
    Heat("OWG2022-TPM-FB", "2022-02-15 17:17:10.965833", "OWG2022-TPM-FB", (3, 4),
         (("USA", "3:38.81", 218_814_392), ("NED", "3:41.62", 221_626_051))),
    Heat("OWG2022-TPM-FA", "2022-02-15 17:36:12.519786", "OWG2022-TPM-FA", (1, 2),
         (("NOR", "3:38.08", 218_083_826), ("ROC", "3:40.46", 220_468_309))),
)

RECORDS_BEFORE = {
    "W": (RecordRef("WR", "team_pursuit", "W", DISTANCE_W, None, "2:50.76", "JPN", "2020-02-15",
                    "SALT LAKE CITY"),
          RecordRef("OR", "team_pursuit", "W", DISTANCE_W, "OWG", "2:53.89", "JPN", "2018-02-21",
                    "GANGNEUNG")),
    "M": (RecordRef("WR", "team_pursuit", "M", DISTANCE_M, None, "3:34.47", "USA", "2020-02-15",
                    "SALT LAKE CITY"),
          RecordRef("OR", "team_pursuit", "M", DISTANCE_M, "OWG", "3:37.08", "NOR", "2018-02-21",
                    "GANGNEUNG")),
}
# In force before the women's final A (JPN's OR from QF4).
RECORDS_BEFORE_WFA = (RECORDS_BEFORE["W"][0],
                      RecordRef("OR", "team_pursuit", "W", DISTANCE_W, "OWG", "2:53.61", "JPN",
                                "2022-02-12", "NSO"))

# Women's final A: Japan's line (Sato, Miho Takagi ahead, Nana Takagi third) and the fall.
TAKAGI = "JPN-TAKAGI-N"
TAKAGI_FALL_AT_M = 2370  # JPN starts at 200: position 170, the last inner curve before its line
TAKAGI_UNFALLEN_US = 173_335_000  # where she would have crossed without the fall
WFA_JPN_FINISHES = {"JPN-SATO": 173_206_518, "JPN-TAKAGI-M": 173_268_027}

SEEDS = {"W": "OWG2022-TPW", "M": "OWG2022-TPM"}
OPTIONS = SimOptions.realistic()


def _gun_us(local: str) -> int:
    dt = datetime.strptime(local, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=CST)
    return int(dt.timestamp()) * S + dt.microsecond


def _skater(gender: str, nation: str, skater_id: str) -> SkaterSpec:
    roster = ROSTERS[gender][nation]
    idx = next(i for i, (sid, _) in enumerate(roster, 1) if sid == skater_id)
    base = f"{4 if gender == 'W' else 5}{NATION_NO[nation]:02d}{idx:02d}"
    return SkaterSpec(skater_id, roster[idx - 1][1], nation, (base + "1", base + "2"))


def _team(gender: str, heat: Heat, nation: str, target_us: int, start_m: int) -> CompetitorSpec:
    ids = (heat.roster or {}).get(nation) or tuple(sid for sid, _ in ROSTERS[gender][nation][:3])
    skaters = tuple(_skater(gender, nation, sid) for sid in ids)
    falls: tuple[Fall, ...] = ()
    pacing = None
    if heat.race_id == "OWG2022-TPW-FA":
        if nation == "JPN":
            pins = dict(WFA_JPN_FINISHES, **{TAKAGI: target_us})
            skaters = tuple(SkaterSpec(s.skater_id, s.name, s.nation, s.transponders,
                                       finish_us=pins[s.skater_id]) for s in skaters)
            falls = (Fall(TAKAGI, TAKAGI_FALL_AT_M, target_us - TAKAGI_UNFALLEN_US, gets_up=True),)
            pacing = Pacing(opener_us=9_400_000, fade=0.04, noise=0.002)
        else:  # Canada: slower opening, stronger finish
            pacing = Pacing(opener_us=9_650_000, fade=0.02, noise=0.002)
    return CompetitorSpec(nation, TEAM_NAMES[nation], nation, skaters, start_m=start_m,
                          target_us=target_us, pacing=pacing, falls=falls)


def races(gender: str, only: tuple[str, ...] | None = None) -> list[RaceSpec]:
    heats = WOMEN if gender == "W" else MEN
    out = []
    for h in heats:
        if only is not None and h.race_id not in only:
            continue
        comps = tuple(_team(gender, h, nat, target, lane)
                      for (nat, _official, target), lane in zip(h.teams, (0, 200)))
        decisions: tuple[Decision, ...] = ()
        if h.race_id == "OWG2022-TPW-FA":
            decisions = (Decision("FALL", after_us=25 * S, competitor_id="JPN", skater_id=TAKAGI,
                                  note="last inner curve"),)
        out.append(RaceSpec(
            h.race_id, COMPETITION, LEVEL, "team_pursuit", gender,
            DISTANCE_W if gender == "W" else DISTANCE_M, _gun_us(h.local), comps,
            group=h.group, places=h.places, decisions=decisions))
    return out


def women_feed() -> SimFeed:
    return simulate(VENUE, races("W"), RECORDS_BEFORE["W"], seed=SEEDS["W"], options=OPTIONS)


def men_feed() -> SimFeed:
    return simulate(VENUE, races("M"), RECORDS_BEFORE["M"], seed=SEEDS["M"], options=OPTIONS)


def women_final_a_feed() -> SimFeed:
    return simulate(VENUE, races("W", only=("OWG2022-TPW-FA",)), RECORDS_BEFORE_WFA,
                    seed=SEEDS["W"], options=OPTIONS)


BUILDERS = {WOMEN_FILE: women_feed, MEN_FILE: men_feed, FINAL_A_FILE: women_final_a_feed}


def build() -> dict[str, SimFeed]:
    """file name -> feed (verified against the official results)."""
    feeds = {name: fn() for name, fn in BUILDERS.items()}
    for feed in feeds.values():
        verify(feed)
    return feeds


# ---------------------------------------------------------------------------
# expectations
# ---------------------------------------------------------------------------


def expected_results() -> dict[str, dict[str, str]]:
    """race_id -> competitor_id -> official time ("2:53.44"), every Beijing race."""
    return {h.race_id: {nat: official for nat, official, _ in h.teams} for h in WOMEN + MEN}


def expected_targets_us() -> dict[str, dict[str, int]]:
    """race_id -> competitor_id -> the simulated elapsed finish (microseconds)."""
    return {h.race_id: {nat: target for nat, _, target in h.teams} for h in WOMEN + MEN}


def expected_records() -> list[tuple[str, str, str, str]]:
    """(race_id, competitor_id, record, time) of every record the feeds set, in order."""
    return [("OWG2022-TPW-QF4", "JPN", "OR", "2:53.61"),
            ("OWG2022-TPW-FA", "CAN", "OR", "2:53.44"),
            ("OWG2022-TPM-SF2", "ROC", "OR", "3:36.62")]


def expected_classification(gender: str) -> list[str]:
    """Competitor ids in final place order (1..8) from finals A-D."""
    heats = WOMEN if gender == "W" else MEN
    places: dict[int, str] = {}
    for h in heats:
        if h.places:
            ranked = sorted(h.teams, key=lambda t: t[2])
            for place, (nat, _, _) in zip(h.places, ranked):
                places[place] = nat
    return [places[p] for p in sorted(places)]


def verify(feed: SimFeed) -> None:
    """Raise AssertionError unless the feed's truth matches the official results and story."""
    exp = expected_results()
    targets = expected_targets_us()
    for rid, rt in feed.truth.races.items():
        for cid, ct in rt.competitors.items():
            if ct.finish_elapsed_us != targets[rid][cid] or ct.time != exp[rid][cid]:
                raise AssertionError(f"{rid} {cid}: {ct.finish_elapsed_us} != {targets[rid][cid]}")
            for st in ct.skaters.values():
                if st.missed:
                    raise AssertionError(f"{rid} {st.skater_id}: missed crossings {st.missed}")
    rt = feed.truth.races.get("OWG2022-TPW-FA")
    if rt is not None:
        jpn, can = rt.competitors["JPN"], rt.competitors["CAN"]
        tk = jpn.skaters[TAKAGI]
        if sorted(jpn.skaters, key=lambda s: jpn.skaters[s].finish_elapsed_us)[-1] != TAKAGI:
            raise AssertionError("Nana Takagi must be Japan's third finisher")
        for d in range(100, 2400, 100):
            j = sorted(s.crossings[d] for s in jpn.skaters.values())[2]
            c = sorted(s.crossings[d] for s in can.skaters.values())[2]
            if not j < c:
                raise AssertionError(f"Japan not ahead of Canada at {d} m")
        gap = tk.crossings[2400] - tk.crossings[2300]
        if not 15 * S < gap < 22 * S:
            raise AssertionError(f"fall gap {gap}")


def check(out_dir: Path = FEEDS_DIR) -> list[str]:
    """Names of the feed files in out_dir that are missing or differ from the builder's."""
    stale = []
    for name, feed in build().items():
        p = Path(out_dir) / name
        if not p.exists() or p.read_bytes() != feed.data():
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streams.beijing", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=FEEDS_DIR, help="output folder (default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if the files in --out differ from what the builder makes")
    args = ap.parse_args(argv)
    if args.check:
        stale = check(args.out)
        for name in stale:
            print(f"stale or missing: {args.out / name}", file=sys.stderr)
        if stale:
            print("run: python -m streams.beijing", file=sys.stderr)
            return 1
        print(f"{len(BUILDERS)} feeds up to date in {args.out}")
        return 0
    for name, feed in build().items():
        p = feed.write(args.out / name)
        print(f"{p}  {len(feed.lines)} lines  {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
