"""The site, drug and ICD-10-CM catalog: the shipped data validates, rows match DOMAIN.md, broken data is named."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml

from service.coding.catalog import (
    CONFIDENCE,
    DATA_DIR,
    SITE_FAMILIES,
    Catalog,
    CatalogError,
    default_catalog,
    icd10_check,
    icd10_laterality,
    is_warning,
    load_catalog,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# --- the shipped data ------------------------------------------------------------------------------------------------

REQUIRED_SITES = [
    "finger_ip_mcp", "thumb_cmc", "toe_ip_mtp", "wrist_joint", "elbow_joint", "ankle_joint", "acromioclavicular",
    "temporomandibular", "olecranon_bursa", "subtalar_joint", "sternoclavicular_joint", "glenohumeral_joint",
    "subacromial_bursa", "hip_joint", "knee_joint", "trochanteric_bursa", "pes_anserine_bursa", "prepatellar_bursa",
    "baker_cyst", "ganglion_cyst", "tendon_sheath", "trigger_finger_sheath", "de_quervain_sheath", "plantar_fascia",
    "tendon_origin", "lateral_epicondyle", "medial_epicondyle", "carpal_tunnel", "trigger_points",
    "peripheral_nerve", "mortons_neuroma",
]  # fmt: skip

# DOMAIN.md §6.1: the only body structures verified (H); every other site's snomed is null.
VERIFIED_SNOMED = {
    "knee_joint": "49076000",
    "hip_joint": "24136001",
    "glenohumeral_joint": "85537004",
    "acromioclavicular": "85856004",
    "elbow_joint": "16953009",
    "wrist_joint": "74670003",
    "ankle_joint": "70258002",
}


def test_the_shipped_files_load_and_validate(catalog: Catalog) -> None:
    assert catalog.source_dir == DATA_DIR
    assert set(REQUIRED_SITES) <= set(catalog.sites)
    assert len(catalog.drugs) >= 20 and len(catalog.icd10_families) >= 20
    assert default_catalog() is default_catalog()  # loaded once


@pytest.mark.parametrize("key", sorted(load_catalog().sites))
def test_every_site_has_its_fields(catalog: Catalog, key: str) -> None:
    site = catalog.site(key)
    assert site.key == key and site.label.strip()
    assert site.family in SITE_FAMILIES
    assert site.conf in CONFIDENCE and "DOMAIN.md" in site.source
    assert isinstance(site.paired, bool) and site.digit in ("none", "finger", "toe")
    if site.family == "arthrocentesis":
        assert site.joint_class in ("small", "intermediate", "major")
        assert (site.default_class is not None) == (site.size_class == "payer_config")
    else:
        assert site.size_class is None and site.joint_class is None
    assert site.snomed == VERIFIED_SNOMED.get(key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        site.paired = not site.paired  # type: ignore[misc]


def test_joint_class_to_cpt_is_domain_1_1(catalog: Catalog) -> None:
    pairs = {cls: (c.no_us, c.us_recorded) for cls, c in catalog.joint_class_codes.items()}
    assert pairs == {"small": ("20600", "20604"), "intermediate": ("20605", "20606"), "major": ("20610", "20611")}


@pytest.mark.parametrize(
    ("site", "payer_class", "no_us", "us"),
    [
        ("finger_ip_mcp", None, "20600", "20604"),
        ("toe_ip_mtp", None, "20600", "20604"),
        ("thumb_cmc", None, "20600", "20604"),  # payer_config, default small
        ("thumb_cmc", "intermediate", "20605", "20606"),  # Highmark
        ("wrist_joint", None, "20605", "20606"),
        ("elbow_joint", None, "20605", "20606"),
        ("ankle_joint", None, "20605", "20606"),
        ("acromioclavicular", None, "20605", "20606"),
        ("temporomandibular", None, "20605", "20606"),
        ("olecranon_bursa", None, "20605", "20606"),
        ("subtalar_joint", None, "20605", "20606"),
        ("sternoclavicular_joint", None, "20605", "20606"),
        ("glenohumeral_joint", None, "20610", "20611"),
        ("subacromial_bursa", None, "20610", "20611"),
        ("hip_joint", None, "20610", "20611"),
        ("knee_joint", None, "20610", "20611"),
        ("knee_joint", "small", "20610", "20611"),  # a fixed class ignores the payer's
        ("trochanteric_bursa", None, "20610", "20611"),
        ("pes_anserine_bursa", None, "20610", "20611"),  # payer_config, default major
        ("pes_anserine_bursa", "intermediate", "20605", "20606"),
        ("baker_cyst", None, "20610", "20611"),
    ],
)
def test_site_class_gives_the_cpt_pair(catalog: Catalog, site: str, payer_class: str | None, no_us: str, us: str):
    codes = catalog.joint_codes(site, payer_class)
    assert codes is not None and (codes.no_us, codes.us_recorded) == (no_us, us)


@pytest.mark.parametrize(
    ("site", "family"),
    [
        ("ganglion_cyst", "20612"),
        ("tendon_sheath", "20550"),
        ("trigger_finger_sheath", "20550"),
        ("de_quervain_sheath", "20550"),
        ("plantar_fascia", "20550"),
        ("tendon_origin", "20551"),
        ("lateral_epicondyle", "20551"),
        ("medial_epicondyle", "20551"),
        ("carpal_tunnel", "20526"),
        ("trigger_points", "20552-20553"),
        ("peripheral_nerve", "64450"),
        ("mortons_neuroma", "64455"),
    ],
)
def test_other_families_have_no_joint_pair(catalog: Catalog, site: str, family: str) -> None:
    assert catalog.site(site).family == family
    assert catalog.joint_codes(site) is None


def test_digits_pairing_and_payer_risk(catalog: Catalog) -> None:
    digits = {k: s.digit for k, s in catalog.sites.items() if s.digit != "none"}
    assert digits == {"finger_ip_mcp": "finger", "toe_ip_mtp": "toe", "trigger_finger_sheath": "finger"}
    assert [k for k, s in catalog.sites.items() if not s.paired] == ["trigger_points"]
    risks = {k: s.us_guidance_payer_risk for k, s in catalog.sites.items() if s.us_guidance_payer_risk}
    assert risks == {"trochanteric_bursa": "aetna_unproven", "trigger_points": "blue_plan_investigational"}
    assert catalog.site("thumb_cmc").conf == "L" and catalog.site("knee_joint").conf == "H"


def test_unknown_keys_raise_key_error(catalog: Catalog) -> None:
    with pytest.raises(KeyError, match="unknown site 'kneecap'"):
        catalog.site("kneecap")
    with pytest.raises(KeyError, match="unknown drug 'kenalog'"):
        catalog.drug("kenalog")


# --- drugs -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drug", "code", "unit_amount", "unit"),
    [
        ("triamcinolone_acetonide", "J3301", 10, "mg"),
        ("triamcinolone_er_microsphere", "J3304", 1, "mg"),
        ("betamethasone_acetate_sodium_phosphate", "J0702", 6, "mg"),
        ("dexamethasone_sodium_phosphate", "J1100", 1, "mg"),
        ("dexamethasone_acetate", "J1094", 1, "mg"),
        ("bupivacaine", "J0665", 0.5, "mg"),
        ("ropivacaine", "J2795", 1, "mg"),
        ("durolane", "J7318", 1, "mg"),
        ("hyalgan", "J7321", None, "dose"),
        ("euflexxa", "J7323", None, "dose"),
        ("synvisc_one", "J7325", 1, "mg"),
        ("gelsyn_3", "J7328", 0.1, "mg"),
        ("triluron", "J7332", 1, "mg"),
        ("prp_autologous", "0232T", None, "session"),
    ],
)
def test_drug_billing_codes_follow_domain_4(catalog: Catalog, drug: str, code: str, unit_amount, unit: str) -> None:
    (billing,) = catalog.drug(drug).codes
    assert (billing.code, billing.unit_amount, billing.unit) == (code, unit_amount, unit)


def test_methylprednisolone_code_is_picked_by_date_of_service(catalog: Catalog) -> None:
    drug = catalog.drug("methylprednisolone_acetate")
    before = {(c.code, c.unit_amount) for c in drug.codes_on(date(2024, 3, 31))}
    assert before == {("J1020", 20), ("J1030", 40), ("J1040", 80)}
    assert [(c.code, c.unit_amount, c.conf) for c in drug.codes_on(date(2024, 4, 1))] == [("J1010", 1, "M")]


def test_drug_kinds_flags_and_labels(catalog: Catalog) -> None:
    drugs = catalog.drugs
    assert {d.kind for d in drugs.values()} == {"corticosteroid", "local_anaesthetic", "hyaluronan", "prp"}
    for d in drugs.values():
        assert d.conf in CONFIDENCE and "DOMAIN.md" in d.source
        assert d.ndc_example is None  # DOMAIN.md gives no NDC
        if d.kind == "hyaluronan":
            assert d.label_joints == ("knee_joint",) and d.dose_units == ("mg",)
        assert d.packaged == (d.kind == "local_anaesthetic")
    lidocaine = drugs["lidocaine"]
    assert lidocaine.codes == () and lidocaine.separately_billable == "no"
    assert drugs["bupivacaine"].separately_billable == "payer_dependent"
    assert drugs["triamcinolone_er_microsphere"].label_joints == ("knee_joint",)
    assert drugs["prp_autologous"].investigational and drugs["prp_autologous"].dose_units == ("mL",)
    assert drugs["prp_autologous"].codes[0].system == "cpt"


@pytest.mark.parametrize(
    ("drug", "site", "off_label"),
    [
        ("synvisc", "knee_joint", False),
        ("synvisc", "hip_joint", True),
        ("euflexxa", "glenohumeral_joint", True),
        ("durolane", "baker_cyst", True),  # the label says knee joint
        ("triamcinolone_er_microsphere", "knee_joint", False),
        ("triamcinolone_er_microsphere", "hip_joint", True),
        ("prp_autologous", "knee_joint", True),  # PRP anywhere
        ("prp_autologous", "lateral_epicondyle", True),
        ("triamcinolone_acetonide", "subacromial_bursa", False),
        ("methylprednisolone_acetate", "carpal_tunnel", False),
        ("lidocaine", "trigger_points", False),
    ],
)
def test_off_label_per_domain_8_4(catalog: Catalog, drug: str, site: str, off_label: bool) -> None:
    assert catalog.is_off_label(drug, site) is off_label
    assert (catalog.off_label_reason(drug, site) is not None) is off_label


def test_off_label_reasons_name_the_product_and_the_site(catalog: Catalog) -> None:
    assert catalog.off_label_reason("synvisc", "hip_joint") == (
        "Hyaluronan: Synvisc is labelled only for Knee joint, not for Hip joint (hip_joint)"
    )
    assert "investigational" in (catalog.off_label_reason("prp_autologous", "knee_joint") or "")
    with pytest.raises(KeyError):
        catalog.is_off_label("kenalog", "knee_joint")


# --- ICD-10-CM -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "side"),
    [
        ("M17.0", "bilateral"),
        ("M17.11", "right"),
        ("M17.12", "left"),
        ("M17.10", "unspecified"),
        ("M17.2", "bilateral"),
        ("M17.31", "right"),
        ("M17.4", "bilateral"),
        ("M17.5", None),  # other unilateral secondary: no side character
        ("M17.9", None),
        ("M16.0", "bilateral"),
        ("M16.12", "left"),
        ("M16.51", "right"),
        ("M75.00", "unspecified"),
        ("M75.02", "left"),
        ("M75.101", "right"),
        ("M75.112", "left"),
        ("M75.120", "unspecified"),
        ("M75.21", "right"),
        ("M75.32", "left"),
        ("M75.41", "right"),
        ("M75.52", "left"),
        ("M75.81", "right"),
        ("M19.011", "right"),
        ("M19.019", "unspecified"),
        ("M65.311", "right"),
        ("M65.312", "left"),
        ("M65.329", "unspecified"),
        ("M65.351", "right"),
        ("M65.30", "unspecified"),
        ("M65.4", None),
        ("G56.00", "unspecified"),
        ("G56.01", "right"),
        ("G56.02", "left"),
        ("G56.03", "bilateral"),
        ("M72.2", None),
        ("M77.12", "left"),
        ("M77.01", "right"),
        ("M70.61", "right"),
        ("M76.60", "unspecified"),
        ("M71.22", "left"),
        ("M67.431", "right"),
        ("M25.462", "left"),
        ("M25.561", "right"),
        # the catalog cannot tell: malformed, incomplete, or a family it does not list
        ("m17.11", None),
        ("M1711", None),
        ("M17.1", None),
        ("S83.241A", None),
    ],
)
def test_icd10_laterality(catalog: Catalog, code: str, side: str | None) -> None:
    assert catalog.icd10_laterality(code) == side
    assert icd10_laterality(code) == side


@pytest.mark.parametrize(
    ("code", "site", "laterality", "expected"),
    [
        ("M17.11", "knee_joint", "right", []),
        ("M17.0", "knee_joint", "right", []),  # bilateral condition, one side treated (§5.1)
        ("M17.12", "knee_joint", "bilateral", []),  # the caller checks both sides are covered
        ("M17.9", "knee_joint", "left", []),
        ("M17.12", "knee_joint", "right", ["M17.12 codes the left side but the procedure is on the right side"]),
        ("M65.311", "trigger_finger_sheath", "left", ["M65.311 codes the right side but the procedure is on the left"]),
        ("M17.10", "knee_joint", "right", ["warning: M17.10 is an unspecified-side code|documented (right)"]),
        ("M75.101", "knee_joint", "right", ["M75.101 (Rotator cuff tear|does not fit the site knee_joint"]),
        ("M17.1", "knee_joint", "right", ["M17.1 is not a complete code of M17|M17.11"]),
        ("M75.1", "subacromial_bursa", "right", ["M75.1 is not a complete code|7 characters"]),
        ("M72.21", "plantar_fascia", "right", ["M72.21 is not a complete code of M72.2|no laterality character"]),
        ("m17.11", "knee_joint", "right", ["'m17.11' is not an ICD-10-CM code"]),
        ("U07.1", None, None, ["'U07.1' is not an ICD-10-CM code"]),
        ("M17.11111", None, None, ["is not an ICD-10-CM code"]),
        ("M17.11\n", None, None, ["is not an ICD-10-CM code"]),
        ("G56.03", "carpal_tunnel", "left", []),
        ("M72.2", "plantar_fascia", "right", []),
        ("M65.4", "de_quervain_sheath", "left", []),
        ("M65.4", "knee_joint", "left", ["M65.4 (Radial styloid tenosynovitis (de Quervain)) does not fit the site"]),
        ("S83.241A", "knee_joint", "right", []),  # unknown family: form only
        ("M17.12", None, None, []),  # nothing to compare yet
        ("M17.12", "nowhere", "right", ["codes the left side"]),  # an unknown site key skips the fit check
    ],
)
def test_icd10_check(catalog: Catalog, code: str, site: str | None, laterality: str | None, expected: list[str]):
    problems = catalog.icd10_check(code, site, laterality)
    assert len(problems) == len(expected), problems
    for problem, fragments in zip(problems, expected, strict=True):
        assert all(f in problem for f in fragments.split("|")), problem
    assert icd10_check(code, site, laterality) == problems


def test_icd10_check_lists_fit_and_side_together_and_marks_warnings(catalog: Catalog) -> None:
    problems = catalog.icd10_check("M75.102", catalog.site("knee_joint"), "right")
    assert [p.split(" ", 2)[1] for p in problems] == ["(Rotator", "codes"]
    assert not any(is_warning(p) for p in problems)
    (warning,) = catalog.icd10_check("M19.019", "glenohumeral_joint", "bilateral")
    assert is_warning(warning) and "M19.019" in warning


def test_icd10_families_only_name_real_sites(catalog: Catalog) -> None:
    for fam in catalog.icd10_families:
        assert fam.sites and set(fam.sites) <= set(catalog.sites)
        assert fam.conf in CONFIDENCE and "DOMAIN.md" in fam.source
    assert {f.key for f in catalog.icd10_families if f.laterality == "none"} == {"M65.4", "M72.2"}


# --- broken data -----------------------------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for name in ("sites.yaml", "drugs.yaml", "icd10cm.yaml"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    return tmp_path


def _edit_rows(path: Path, section: str, key: str, change) -> None:
    data = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    (row,) = [r for r in data[section] if r["key"] == key]
    change(row, data[section])
    path.write_text(yaml.dump(data, Dumper=yaml.CSafeDumper, sort_keys=False))


@pytest.mark.parametrize(
    ("file", "section", "key", "change", "message"),
    [
        (
            "sites.yaml",
            "sites",
            "knee_joint",
            lambda row, rows: row.update(colour="red"),
            r"sites.yaml: sites\[\d+\] \(key 'knee_joint'\), field 'colour': unknown field",
        ),
        (
            "sites.yaml",
            "sites",
            "knee_joint",
            lambda row, rows: row.pop("paired"),
            r"sites.yaml: sites\[\d+\] \(key 'knee_joint'\), field 'paired': missing \(required\)",
        ),
        (
            "sites.yaml",
            "sites",
            "wrist_joint",
            lambda row, rows: row.update(family="joint"),
            r"sites.yaml: sites\[\d+\] \(key 'wrist_joint'\), field 'family': 'joint' is not one of arthrocentesis",
        ),
        (
            "sites.yaml",
            "sites",
            "thumb_cmc",
            lambda row, rows: row.pop("default_class"),
            r"\(key 'thumb_cmc'\), field 'default_class': missing",
        ),
        (
            "sites.yaml",
            "sites",
            "carpal_tunnel",
            lambda row, rows: row.update(size_class="small"),
            r"\(key 'carpal_tunnel'\), field 'size_class': only arthrocentesis sites have a size class",
        ),
        (
            "sites.yaml",
            "sites",
            "hip_joint",
            lambda row, rows: row.update(snomed="UNVERIFIED"),
            r"\(key 'hip_joint'\), field 'snomed': 'UNVERIFIED' does not match",
        ),
        (
            "sites.yaml",
            "sites",
            "elbow_joint",
            lambda row, rows: rows.append(dict(row)),
            r"sites.yaml: sites\[\d+\] \(key 'elbow_joint'\), field 'key': duplicate key 'elbow_joint' \(first in",
        ),
        (
            "drugs.yaml",
            "drugs",
            "synvisc",
            lambda row, rows: row.update(label_joints=["knee"]),
            r"drugs.yaml: drugs\[\d+\] \(key 'synvisc'\), field 'label_joints': 'knee' is not a site of sites.yaml",
        ),
        (
            "drugs.yaml",
            "drugs",
            "lidocaine",
            lambda row, rows: row.update(separately_billable=False),
            r"\(key 'lidocaine'\), field 'separately_billable': got False: YAML reads an unquoted yes/no",
        ),
        (
            "drugs.yaml",
            "drugs",
            "triamcinolone_acetonide",
            lambda row, rows: row["codes"][0].update(unit_amount=0),
            r"drugs\[\d+\] \(key 'triamcinolone_acetonide'\), codes\[0\], field 'unit_amount': expected a positive",
        ),
        (
            "drugs.yaml",
            "drugs",
            "methylprednisolone_acetate",
            lambda row, rows: row["codes"][0].update(effective_to="31/03/2024"),
            r"codes\[0\], field 'effective_to': expected a date YYYY-MM-DD",
        ),
        (
            "drugs.yaml",
            "drugs",
            "durolane",
            lambda row, rows: row.update(kind="viscosupplement"),
            r"\(key 'durolane'\), field 'kind': 'viscosupplement' is not one of corticosteroid",
        ),
        (
            "icd10cm.yaml",
            "families",
            "M17",
            lambda row, rows: row["sites"].append("knee"),
            r"icd10cm.yaml: families\[0\] \(key 'M17'\), field 'sites': 'knee' is not a site of sites.yaml",
        ),
        (
            "icd10cm.yaml",
            "families",
            "G56.0",
            lambda row, rows: row["side_chars"].update({"3": "both"}),
            r"\(key 'G56.0'\), field 'side_chars': '3': 'both' must map one character",
        ),
        (
            "icd10cm.yaml",
            "families",
            "M16",
            lambda row, rows: row["codes"].update({"M17.0": "bilateral"}),
            r"\(key 'M16'\), field 'codes': 'M17.0' is not an ICD-10-CM code starting with M16",
        ),
    ],
)
def test_broken_rows_name_file_row_and_field(data_dir: Path, file, section, key, change, message) -> None:
    _edit_rows(data_dir / file, section, key, change)
    with pytest.raises(CatalogError, match=message):
        load_catalog(data_dir)


def test_a_field_given_twice_in_one_row_is_refused(data_dir: Path) -> None:
    path = data_dir / "sites.yaml"
    text = path.read_text()
    assert text.count("{key: knee_joint, ") == 1
    path.write_text(text.replace("{key: knee_joint, ", "{key: knee_joint, paired: false, "))
    message = (
        r"sites.yaml, line \d+, column \d+: not valid YAML: found the key 'paired' twice \(while reading a mapping"
    )
    with pytest.raises(CatalogError, match=message):
        load_catalog(data_dir)


def test_unreadable_or_malformed_files(data_dir: Path) -> None:
    (data_dir / "drugs.yaml").write_text("drugs: [unclosed\n")
    with pytest.raises(CatalogError, match=r"drugs.yaml, line 2, column 1: not valid YAML"):
        load_catalog(data_dir)
    (data_dir / "drugs.yaml").write_text("- just a list\n")
    with pytest.raises(CatalogError, match="drugs.yaml: expected a mapping at the top level"):
        load_catalog(data_dir)
    (data_dir / "drugs.yaml").write_text("drugs: []\nextras: []\n")
    with pytest.raises(CatalogError, match="drugs.yaml: unknown section 'extras'"):
        load_catalog(data_dir)
    (data_dir / "icd10cm.yaml").unlink()
    (data_dir / "drugs.yaml").write_text("drugs: []\n")
    with pytest.raises(CatalogError, match="icd10cm.yaml: cannot read"):
        load_catalog(data_dir)
