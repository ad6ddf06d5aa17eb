"""Load, merge (local protocol) and validate the knowledge base.

Loading is the only place that touches the knowledge files; the engine receives a
ready, immutable `Knowledge` whose cross-references (sources, finding codes, analytes,
drugs) have all been checked, so a rule can never cite a source or code that does not exist.
"""

from __future__ import annotations

import copy
import csv
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from azaguard.knowledge import model as m
from azaguard.knowledge import workdays

DATA = "azaguard.knowledge.data"
LOCAL_SOURCE_KEY = "local-protocol"


def word_match(text: str, needles: list[str]) -> bool:
    """A needle matches at the start of a word ("fever" in "high fever", not "aseptic" for
    "sepsis"): how knowledge text lists are matched against free text, by readers and engine alike."""
    low = text.lower()
    return any(re.search(r"(?<![a-z0-9])" + re.escape(n), low) for n in needles)


class KnowledgeError(Exception):
    """A knowledge or local-protocol file is malformed; the message names file and field."""


@dataclass(frozen=True)
class CpicGene:
    gene: str
    allele_function: dict[str, str]
    diplotype_phenotype: dict[str, str]


@dataclass(frozen=True)
class Knowledge:
    meta: m.Meta
    protocol: dict[str, str]
    sources: dict[str, m.Source]
    indications: dict[str, m.Indication]
    other_indications: dict[str, m.OtherIndication]
    dosing: m.Dosing
    pgx: m.Pgx
    schedule: m.Schedule
    thresholds: tuple[m.Threshold, ...]
    rises: tuple[m.Rise, ...]
    trends: tuple[m.Trend, ...]
    uln_rules: tuple[m.UlnRule, ...]
    ctcae: dict[str, m.Ctcae]
    analytes: dict[str, m.Analyte]
    units: dict[str, dict[str, float]]
    unit_overrides: dict[str, dict[str, float]]
    pgx_codes: m.PgxCodes
    status_codes: m.StatusCodes
    screening_codes: dict[str, list[str]]
    drugs: dict[str, m.Drug]
    interactions: tuple[m.Interaction, ...]
    conditions: dict[str, m.ConditionRule]
    screening: tuple[m.ScreeningItem, ...]
    screening_results: tuple[m.ScreeningResult, ...]
    allergy: m.AllergyRule
    vaccines: m.Vaccines
    symptoms: m.Symptoms
    reproduction: m.Reproduction
    metabolites: m.Metabolites
    efficacy: m.Efficacy
    findings: dict[str, m.FindingText]
    guide: tuple[m.GuideSection, ...]
    cpic: dict[str, CpicGene]
    # canonical (UCUM) unit -> how screens write it ("10*9/L" -> "x10^9/L"); presentation only
    display_units: dict[str, str] = field(default_factory=dict)
    # RxNorm clinical drugs (codes.toml [products]): strength per tablet for orders written in tablets
    products: m.Products = field(default_factory=lambda: m.Products(sources=[], codes={}))
    # test group -> its LOINC order code (codes.toml [order_codes]), for orders a card suggests
    order_codes: dict[str, m.OrderCode] = field(default_factory=dict)
    guide_article: m.GuideArticle | None = None  # the article the guide corrects (guide.toml [article])
    # The clinic's working days (weekends, public holidays): due dates on other days move to the
    # working day before (engine.schedule.working_day). Configuration, not clinical content: set by
    # load_knowledge from AZAGUARD_HOLIDAYS (knowledge/workdays.py); None = no calendar.
    calendar: m.WorkingCalendar | None = None
    # derived indexes, built once
    loinc_index: dict[str, str] = field(default_factory=dict)
    local_code_index: dict[str, str] = field(default_factory=dict)
    rxnorm_index: dict[str, str] = field(default_factory=dict)
    drug_name_pattern: re.Pattern[str] | None = None
    drug_name_index: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The string stated on every output: protocol version, CPIC data, local protocol."""
        base = f"{self.meta.id} {self.meta.version} (CPIC data {self.meta.cpic_data_version})"
        if self.protocol.get("local") == "yes":
            return f"{base} + local protocol '{self.protocol['name']}' v{self.protocol['version']}"
        return base

    def cite(self, keys: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"{k}: {self.sources[k].citation}" for k in keys)

    def drug_for_rxnorm(self, code: str) -> str | None:
        return self.rxnorm_index.get(code)

    def drug_for_text(self, text: str) -> str | None:
        """Find a known medicine name as a whole word in free text (brand or generic)."""
        if self.drug_name_pattern is None:
            return None
        found = self.drug_name_pattern.search(text.lower())
        return self.drug_name_index[found.group(1)] if found else None

    def display_unit(self, unit: str | None) -> str:
        """A canonical unit as screens write it (codes.toml [display_units]); unknown: as given."""
        return self.display_units.get(unit or "", unit or "")

    def convert(self, analyte: str, value: float, unit: str) -> float | None:
        """Convert to the analyte's canonical unit through the known table, or None."""
        table = self.unit_overrides.get(analyte) or self.units[self.analytes[analyte].canonical]
        factor = table.get(unit.strip())
        if factor is None:
            factor = table.get(unit.strip().replace("μ", "u").replace("µ", "u"))
        return None if factor is None else value * factor


def _read_toml(name: str) -> dict[str, Any]:
    text = resources.files(DATA).joinpath(name).read_text(encoding="utf-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KnowledgeError(f"knowledge file {name}: {exc}") from exc


def _read_tsv(name: str) -> list[dict[str, str]]:
    text = resources.files(DATA).joinpath(f"cpic/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def _validate(adapter_type: Any, data: Any, where: str) -> Any:
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(adapter_type).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise KnowledgeError(f"{where}.{loc}: {first['msg']}") from exc


def _load_cpic() -> dict[str, CpicGene]:
    genes = {}
    for gene in ("TPMT", "NUDT15"):
        funcs = {r["allele"]: r["clinical_function"] for r in _read_tsv(f"{gene}_allele_function.tsv")}
        dips = {r["diplotype"]: r["phenotype"] for r in _read_tsv(f"{gene}_diplotype_phenotype.tsv")}
        genes[gene] = CpicGene(gene, funcs, dips)
    return genes


# Keys a local protocol may change, by section. Anything else is refused: a clinic tunes
# thresholds and intervals, it does not silently rewrite pharmacology.
_LOCAL_THRESHOLD_KEYS = {"value", "severity", "action", "message", "patient_text", "follow_up"}
_LOCAL_TREND_KEYS = {"fall_fraction", "successive_falls", "severity", "action"}
_LOCAL_RISE_KEYS = {"rise_fraction", "window", "severity", "action"}
_LOCAL_SCHEDULE_KEYS = {
    "initial_interval",
    "stable_after",
    "consolidation_interval",
    "consolidation_duration",
    "maintenance_interval",
    "missed_visits_critical",
    "panels",
    "low_risk",
}
_LOCAL_DOSING_KEYS = {"target_mg_per_kg", "max_mg_per_kg", "max_mg_per_day", "start_mg_per_day", "step_mg"}


def _apply_local(raw: dict[str, Any], local: dict[str, Any], path: str) -> dict[str, str]:
    """Merge a local protocol into the raw knowledge; every changed rule cites the local protocol."""
    head = local.get("protocol")
    if not isinstance(head, dict) or not isinstance(head.get("name"), str) or not isinstance(head.get("version"), str):
        raise KnowledgeError(f"{path}: [protocol] needs string fields 'name' and 'version'")
    raw["sources"][LOCAL_SOURCE_KEY] = {
        "citation": f"Local protocol '{head['name']}' v{head['version']}"
        + (f" - {head['source']}" if "source" in head else "")
    }
    allowed_sections = {"protocol", "thresholds", "trends", "rises", "schedule", "dosing", "vaccines", "tpmt_activity"}
    for section in local:
        if section not in allowed_sections:
            raise KnowledgeError(
                f"{path}: section [{section}] cannot be overridden (allowed: {sorted(allowed_sections)})"
            )

    for section, value in local.items():
        if section == "tpmt_activity":
            continue  # an array of tables, checked below
        if not isinstance(value, dict):
            raise KnowledgeError(f"{path}: [{section}] must be a table, got {type(value).__name__}")
    assays = local.get("tpmt_activity", [])
    if not isinstance(assays, list) or not all(isinstance(a, dict) for a in assays):
        raise KnowledgeError(f"{path}: [[tpmt_activity]] must be an array of tables (assay, lab, unit, bands)")
    # The clinic's own laboratory bands come first: a result naming that assay uses them.
    raw["protocol"]["pgx"]["activity_units"] = [
        {**a, "sources": [LOCAL_SOURCE_KEY, *a.get("sources", [])]} for a in assays
    ] + raw["protocol"]["pgx"]["activity_units"]

    def check_values(where: str, change: dict[str, Any]) -> None:
        for key, value in change.items():
            if isinstance(value, bool):
                raise KnowledgeError(f"{path}: {where}.{key} must be a number or text, not true/false")

    def merge_rules(section: str, rules: list[dict[str, Any]], keys: set[str]) -> None:
        by_id = {r["id"]: r for r in rules}
        for rid, change in local.get(section, {}).items():
            if not isinstance(change, dict):
                raise KnowledgeError(
                    f"{path}: [{section}.{rid}] must be a table of settings, got {type(change).__name__}"
                )
            check_values(f"[{section}.{rid}]", change)
            if rid not in by_id:
                raise KnowledgeError(f"{path}: [{section}.{rid}] names no rule (known: {sorted(by_id)})")
            bad = set(change) - keys
            if bad:
                raise KnowledgeError(f"{path}: [{section}.{rid}] cannot set {sorted(bad)} (allowed: {sorted(keys)})")
            by_id[rid].update(change)
            by_id[rid]["sources"] = [LOCAL_SOURCE_KEY, *by_id[rid]["sources"]]

    merge_rules("thresholds", raw["labs"]["thresholds"], _LOCAL_THRESHOLD_KEYS)
    merge_rules("trends", raw["labs"]["trends"], _LOCAL_TREND_KEYS)
    merge_rules("rises", raw["labs"]["rises"], _LOCAL_RISE_KEYS)
    for section, target, keys in (
        ("schedule", raw["protocol"]["schedule"], _LOCAL_SCHEDULE_KEYS),
        ("dosing", raw["protocol"]["dosing"], _LOCAL_DOSING_KEYS),
        ("vaccines", raw["safety"]["vaccines"], {"live_washout"}),
    ):
        change = local.get(section, {})
        check_values(f"[{section}]", change)
        bad = set(change) - keys
        if bad:
            raise KnowledgeError(f"{path}: [{section}] cannot set {sorted(bad)} (allowed: {sorted(keys)})")
        if section == "schedule" and isinstance(change.get("low_risk"), dict):
            # Enabling the extended interval is the clinic's decision: it cites the local protocol.
            merged = {**target["low_risk"], **change["low_risk"]}
            merged["sources"] = [LOCAL_SOURCE_KEY, *target["low_risk"]["sources"]]
            change = {**change, "low_risk": merged}
        if section == "schedule" and isinstance(change.get("panels"), dict):
            # A clinic names only the panels it changes (e.g. LFT without albumin); the rest stay.
            panels = {
                k: {"sources": [LOCAL_SOURCE_KEY], **v} for k, v in change["panels"].items() if isinstance(v, dict)
            }
            change = {**change, "panels": {**target["panels"], **panels}}
        if change:
            target.update(change)
            src_key = "live_washout_sources" if section == "vaccines" else "sources"
            target[src_key] = [LOCAL_SOURCE_KEY, *target[src_key]]
    return {"name": head["name"], "version": head["version"], "local": "yes"}


_TOML_FILES = ("sources", "protocol", "labs", "codes", "medicines", "safety", "findings", "guide")


@lru_cache(maxsize=8)
def _load_raw() -> dict[str, Any]:
    return {name: _read_toml(f"{name}.toml") for name in _TOML_FILES}


def load_knowledge(local_protocol: str | Path | None = None, holidays: str | None = None) -> Knowledge:
    """Load the packaged knowledge base, optionally overridden by a clinic's local protocol file.

    `holidays` is the working-day calendar ("GB-ENG", "none"; default: AZAGUARD_HOLIDAYS, else
    England and Wales): every assessment made with this knowledge moves due dates by it."""
    spec = workdays.configured() if holidays is None else holidays
    calendar = _calendar(spec)
    if local_protocol is None:
        return _load_default(calendar.code if calendar else "none")
    path = str(local_protocol)
    try:
        local = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot read local protocol ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise KnowledgeError(f"{path}: not valid TOML ({exc})") from exc
    raw = copy.deepcopy(_load_raw())
    protocol = _apply_local(raw, local, path)
    try:
        kb = _build(raw, protocol)
    except KnowledgeError as exc:
        raise KnowledgeError(f"{path}: after merging this local protocol, {_name_rules(str(exc), raw)}") from exc
    object.__setattr__(kb, "calendar", calendar)
    return kb


def _calendar(spec: str) -> m.WorkingCalendar | None:
    try:
        return workdays.build(spec)
    except workdays.CalendarError as exc:
        raise KnowledgeError(str(exc)) from exc


def _name_rules(message: str, raw: dict[str, Any]) -> str:
    """Replace list positions ("labs.toml:thresholds.0.value") with rule ids ("thresholds.wbc-low.value")."""

    def by_id(match: re.Match[str]) -> str:
        section, index = match.group(1), int(match.group(2))
        rules = raw["labs"].get(section, [])
        return f"{section}.{rules[index]['id']}" if index < len(rules) else match.group(0)

    return re.sub(r"labs\.toml:(thresholds|rises|trends)\.(\d+)", by_id, message)


@lru_cache(maxsize=4)
def _load_default(calendar: str) -> Knowledge:
    """The packaged knowledge base, validated from its files on every start (once per process).

    There is deliberately no cache on disk: a cached copy would be a file other users or programs
    could replace (a pickle would even run their code), and validating the files costs about
    150 ms, which keeps `azaguard assess` well inside its 500 ms (bench/assess.py).
    """
    raw = _load_raw()
    meta = raw["protocol"]["meta"]
    kb = _build(copy.deepcopy(raw), {"name": meta["name"], "version": meta["version"], "local": "no"})
    object.__setattr__(kb, "calendar", _calendar(calendar))  # one Knowledge per calendar, built once
    return kb


def _build(raw: dict[str, Any], protocol: dict[str, str]) -> Knowledge:
    p, labs, codes, meds, safety = raw["protocol"], raw["labs"], raw["codes"], raw["medicines"], raw["safety"]
    sources = _validate(dict[str, m.Source], raw["sources"], "sources.toml")
    kb = Knowledge(
        meta=_validate(m.Meta, p["meta"], "protocol.toml:meta"),
        protocol=protocol,
        sources=sources,
        indications=_validate(dict[str, m.Indication], p["indications"], "protocol.toml:indications"),
        other_indications=_validate(
            dict[str, m.OtherIndication], p.get("other_indications", {}), "protocol.toml:other_indications"
        ),
        dosing=_validate(m.Dosing, p["dosing"], "protocol.toml:dosing"),
        pgx=_validate(m.Pgx, p["pgx"], "protocol.toml:pgx"),
        schedule=_validate(m.Schedule, p["schedule"], "protocol.toml:schedule"),
        thresholds=tuple(_validate(list[m.Threshold], labs["thresholds"], "labs.toml:thresholds")),
        rises=tuple(_validate(list[m.Rise], labs["rises"], "labs.toml:rises")),
        trends=tuple(_validate(list[m.Trend], labs["trends"], "labs.toml:trends")),
        uln_rules=tuple(_validate(list[m.UlnRule], labs.get("uln_rules", []), "labs.toml:uln_rules")),
        ctcae=_validate(dict[str, m.Ctcae], labs["ctcae"], "labs.toml:ctcae"),
        analytes=_validate(dict[str, m.Analyte], codes["analytes"], "codes.toml:analytes"),
        units=_validate(dict[str, dict[str, float]], codes["units"], "codes.toml:units"),
        unit_overrides=_validate(dict[str, dict[str, float]], codes["unit_overrides"], "codes.toml:unit_overrides"),
        pgx_codes=_validate(m.PgxCodes, codes["pgx"], "codes.toml:pgx"),
        status_codes=_validate(m.StatusCodes, codes["status"], "codes.toml:status"),
        screening_codes=_validate(dict[str, list[str]], codes["screening_codes"], "codes.toml:screening_codes"),
        drugs=_validate(dict[str, m.Drug], meds["drugs"], "medicines.toml:drugs"),
        interactions=tuple(_validate(list[m.Interaction], meds["interactions"], "medicines.toml:interactions")),
        conditions=_validate(dict[str, m.ConditionRule], safety["conditions"], "safety.toml:conditions"),
        screening=tuple(_validate(list[m.ScreeningItem], safety["screening"], "safety.toml:screening")),
        screening_results=tuple(
            _validate(list[m.ScreeningResult], safety["screening_results"], "safety.toml:screening_results")
        ),
        allergy=_validate(m.AllergyRule, safety["allergy"], "safety.toml:allergy"),
        vaccines=_validate(m.Vaccines, safety["vaccines"], "safety.toml:vaccines"),
        symptoms=_validate(m.Symptoms, safety["symptoms"], "safety.toml:symptoms"),
        reproduction=_validate(m.Reproduction, safety["reproduction"], "safety.toml:reproduction"),
        metabolites=_validate(m.Metabolites, safety["metabolites"], "safety.toml:metabolites"),
        efficacy=_validate(m.Efficacy, safety["efficacy"], "safety.toml:efficacy"),
        findings=_validate(dict[str, m.FindingText], raw["findings"], "findings.toml"),
        guide=tuple(_validate(list[m.GuideSection], raw["guide"]["sections"], "guide.toml:sections")),
        guide_article=_validate(m.GuideArticle, raw["guide"]["article"], "guide.toml:article"),
        cpic=_load_cpic(),
        display_units=_validate(dict[str, str], codes.get("display_units", {}), "codes.toml:display_units"),
        products=_validate(m.Products, codes["products"], "codes.toml:products"),
        order_codes=_validate(dict[str, m.OrderCode], codes["order_codes"], "codes.toml:order_codes"),
    )
    _check_references(kb)
    return _index(kb)


def _check_references(kb: Knowledge) -> None:
    """Refuse dangling references: every cited source, finding code, analyte and drug must exist."""
    from azaguard.domain import CATEGORIES

    def need_sources(keys: list[str], where: str) -> None:
        missing = [k for k in keys if k not in kb.sources]
        if missing:
            raise KnowledgeError(f"{where}: cites unknown source(s) {missing}")
        if not keys:
            raise KnowledgeError(f"{where}: has no source")

    for key, ind in kb.indications.items():
        need_sources(ind.sources, f"indications.{key}")
    need_sources(kb.dosing.sources, "dosing")
    need_sources(kb.dosing.step_interval_sources, "dosing.step_interval_sources")
    need_sources(kb.dosing.renal.sources, "dosing.renal")
    need_sources(kb.dosing.hepatic.sources, "dosing.hepatic")
    for key, comb in kb.pgx.combined.items():
        need_sources(comb.sources, f"pgx.combined.{key}")
    for unit in kb.pgx.activity_units:
        need_sources(unit.sources, f"pgx.activity_units[{unit.unit[0]}]")
    _check_cpic(kb, need_sources)
    need_sources(kb.schedule.sources, "schedule")
    lab_rules: list[m.Threshold | m.Rise | m.Trend] = [*kb.thresholds, *kb.rises, *kb.trends]
    for rule in lab_rules:
        need_sources(rule.sources, f"labs.{rule.id}")
    for t in kb.thresholds:
        if t.analyte not in kb.analytes:
            raise KnowledgeError(f"labs.thresholds.{t.id}: unknown analyte {t.analyte}")
        if t.ctcae and t.ctcae not in kb.ctcae:
            raise KnowledgeError(f"labs.thresholds.{t.id}: unknown ctcae term {t.ctcae}")
    for tr in kb.trends:
        for name in tr.analytes:
            if name not in kb.analytes:
                raise KnowledgeError(f"labs.trends.{tr.id}: unknown analyte {name}")
    for analyte in kb.analytes.values():
        if analyte.canonical not in kb.units:
            raise KnowledgeError(f"codes.analytes: no unit table for canonical unit {analyte.canonical}")
    for ucum, shown in kb.display_units.items():
        if ucum not in kb.units or shown not in kb.units[ucum]:
            raise KnowledgeError(f"codes.display_units: {ucum} -> {shown} is not an accepted spelling of a known unit")
    need_sources(kb.products.sources, "codes.products")
    for group, oc in kb.order_codes.items():
        need_sources(oc.sources, f"codes.order_codes.{group}")
        if group not in kb.schedule.panels:
            raise KnowledgeError(f"codes.order_codes.{group}: not a test group of schedule.panels")
    for code, product in kb.products.codes.items():
        if product.drug not in kb.drugs:
            raise KnowledgeError(f"codes.products.{code}: unknown drug {product.drug}")
    for key, c in kb.ctcae.items():
        need_sources(c.sources, f"ctcae.{key}")
    for ix in kb.interactions:
        need_sources(ix.sources, f"interactions.{ix.id}")
        for d in ix.drugs:
            if d not in kb.drugs:
                raise KnowledgeError(f"interactions.{ix.id}: unknown drug {d}")
    for code, text in kb.findings.items():
        need_sources(text.sources, f"findings.{code}")
        if text.category not in CATEGORIES:
            raise KnowledgeError(f"findings.{code}: unknown category {text.category}")
    for key, cond in kb.conditions.items():
        if cond.finding not in kb.findings:
            raise KnowledgeError(f"conditions.{key}: finding {cond.finding} has no text in findings.toml")
    if kb.allergy.finding not in kb.findings:
        raise KnowledgeError(f"allergy: finding {kb.allergy.finding} has no text in findings.toml")
    need_sources(kb.vaccines.live_washout_sources, "vaccines.live_washout")
    need_sources(kb.symptoms.sources_default, "symptoms")
    need_sources(kb.symptoms.hypersensitivity_sources, "symptoms.hypersensitivity")
    for key in kb.symptoms.hypersensitivity_symptoms:
        if key not in kb.symptoms.items:
            raise KnowledgeError(f"symptoms.hypersensitivity_symptoms: unknown symptom {key}")
    need_sources(kb.reproduction.pregnancy_sources, "reproduction.pregnancy")
    need_sources(kb.reproduction.breastfeeding_sources, "reproduction.breastfeeding")
    need_sources(kb.metabolites.sources, "metabolites")
    need_sources(kb.efficacy.sources, "efficacy")
    vaccine_keys = set(kb.vaccines.live) | set(kb.vaccines.inactivated) | set(kb.vaccines.uncertain)
    for item in kb.screening:
        if item.finding not in kb.findings:
            raise KnowledgeError(f"screening: finding {item.finding} has no text in findings.toml")
        if item.group and item.group not in kb.schedule.groups:
            raise KnowledgeError(f"screening.{item.finding}: unknown test group {item.group}")
        for test in item.tests:
            if test not in kb.screening_codes:
                raise KnowledgeError(f"screening.{item.finding}: unknown screening test {test}")
        for v in (*item.vaccines, *item.vaccines_all):
            if v not in vaccine_keys:
                raise KnowledgeError(f"screening.{item.finding}: unknown vaccine {v}")
    for res in kb.screening_results:
        if res.test not in kb.screening_codes or res.finding not in kb.findings:
            raise KnowledgeError(f"screening_results: unknown test {res.test} or finding {res.finding}")
    for section in kb.guide:
        need_sources(section.sources, f"guide.{section.id}")
    if kb.guide_article is not None:
        need_sources([kb.guide_article.source], "guide.article")
    if kb.symptoms.emergency is not None:
        for sign in kb.symptoms.emergency.signs:
            need_sources(sign.sources, "symptoms.emergency.signs")
        if kb.symptoms.emergency.note:
            need_sources(kb.symptoms.emergency.note_sources, "symptoms.emergency.note")
    _check_follow_ups(kb, need_sources)


def _check_cpic(kb: Knowledge, need_sources: Any) -> None:
    """The CPIC tables, the fallback rules and the allele aliases agree with one another."""
    rules = kb.pgx.function_rules
    need_sources(rules.sources, "pgx.function_rules")
    if set(rules.genes) != set(kb.cpic):
        raise KnowledgeError(f"pgx.function_rules: need rules for exactly the CPIC genes {sorted(kb.cpic)}")
    for gene, table in kb.cpic.items():
        unknown = sorted(set(table.allele_function.values()) - set(rules.classes))
        if unknown:
            raise KnowledgeError(f"pgx.function_rules.classes: no class for {gene} function(s) {unknown}")
        for diplotype in table.diplotype_phenotype:
            missing = [a for a in diplotype.split("/") if a not in table.allele_function]
            if missing:
                raise KnowledgeError(f"cpic/{gene}_diplotype_phenotype.tsv: {diplotype} names unlisted {missing}")
    for alias in kb.pgx.allele_aliases:
        where = f"pgx.allele_aliases[{alias.gene} {alias.allele}]"
        need_sources(alias.sources, where)
        aliased = kb.cpic.get(alias.gene)
        if aliased is None or alias.read_as not in aliased.allele_function:
            raise KnowledgeError(f"{where}: {alias.read_as} is not a {alias.gene} allele of the CPIC table")
        if alias.allele in aliased.allele_function:
            raise KnowledgeError(f"{where}: {alias.allele} is still a CPIC allele and cannot be read as another")


def _check_follow_ups(kb: Knowledge, need_sources: Any) -> None:
    """Follow-ups, panels and ULN rules name real groups, analytes and sources."""
    groups = set(kb.schedule.groups)
    if set(kb.schedule.panels) != groups:
        raise KnowledgeError(f"schedule.panels: need exactly one panel per group {sorted(groups)}")
    for name, panel in kb.schedule.panels.items():
        need_sources(panel.sources, f"schedule.panels.{name}")
        for alt in panel.require:
            for a in alt:
                if a not in kb.analytes or kb.analytes[a].group != name:
                    raise KnowledgeError(f"schedule.panels.{name}: {a} is not an analyte of group {name}")
    need_sources(kb.schedule.restart_sequence_sources, "schedule.restart_sequence_on")
    need_sources(kb.schedule.restart.sources, "schedule.restart")
    need_sources(kb.schedule.risk_review.sources, "schedule.risk_review")
    need_sources(kb.schedule.low_risk.sources, "schedule.low_risk")
    lab_rules: list[m.Threshold | m.Rise | m.Trend | m.UlnRule] = [*kb.thresholds, *kb.rises, *kb.trends, *kb.uln_rules]
    rules: list[tuple[str, m.FollowUpRule | None]] = [
        *((f"labs.{r.id}", r.follow_up) for r in lab_rules),
        *((f"interactions.{r.id}", r.follow_up) for r in kb.interactions),
        *((f"findings.{code}", t.follow_up) for code, t in kb.findings.items()),
    ]
    for where, fu in rules:
        if fu is None:
            continue
        if fu.group not in groups:
            raise KnowledgeError(f"{where}.follow_up: unknown test group {fu.group}")
        if fu.sources:
            need_sources(fu.sources, f"{where}.follow_up")
        for a in fu.answered_by:
            if a not in kb.analytes:
                raise KnowledgeError(f"{where}.follow_up: unknown analyte {a}")
    for key, sym in kb.symptoms.items.items():
        for a in sym.answered_by:
            if a not in kb.analytes:
                raise KnowledgeError(f"symptoms.{key}: unknown analyte {a} in answered_by")
    for rule in kb.uln_rules:
        need_sources(rule.sources, f"labs.{rule.id}")
        if rule.analyte not in kb.analytes or rule.ctcae not in kb.ctcae:
            raise KnowledgeError(f"labs.uln_rules.{rule.id}: unknown analyte or ctcae term")
    for group in kb.schedule.groups:
        if not any(a.group == group for a in kb.analytes.values()):
            raise KnowledgeError(f"schedule.groups: no analyte belongs to group {group}")


def _index(kb: Knowledge) -> Knowledge:
    loinc = {code: key for key, a in kb.analytes.items() for code in a.loinc}
    local = {code.lower(): key for key, a in kb.analytes.items() for code in a.local}
    rx = {code: key for key, d in kb.drugs.items() for code in d.rxnorm}
    rx.update({code: p.drug for code, p in kb.products.codes.items() if code not in rx})
    names = {name.lower(): key for key, d in kb.drugs.items() for name in d.names}
    # Longest names first so "6-mercaptopurine" wins over "mercaptopurine".
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w-])({alternation})(?![\w])")
    object.__setattr__(kb, "loinc_index", loinc)
    object.__setattr__(kb, "local_code_index", local)
    object.__setattr__(kb, "rxnorm_index", rx)
    object.__setattr__(kb, "drug_name_index", names)
    object.__setattr__(kb, "drug_name_pattern", pattern)
    return kb
