"""PharmCAT reports (JSON) -> TPMT and NUDT15 genotype items.

PharmCAT (PharmGKB / ClinPGx) calls star-allele diplotypes from a genome's VCF and writes a report
JSON. Its `genes` section holds each gene's call - keyed by gene in v3, by source (CPIC, DPWG)
and then gene in v2 - with `sourceDiplotypes` (`label` "*1/*3A", `phenotypes` ["Intermediate
Metabolizer"]); its `drugs` section holds the guideline annotations, which repeat the diplotypes
each recommendation used. The gene section is read first; for a gene it lacks (an excerpt of a
report, like the drug annotations in shared/reference/cpic), the thiopurine annotations are read.

Each called gene becomes one genotype item: diplotype and phenotype as PharmCAT wrote them (the
engine looks the diplotype up in the knowledge base's CPIC tables itself), dated by the report's
timestamp, with PharmCAT's version and data version in the record's identity and reference as its
provenance. What is never imported, and goes to quarantine with its reason, so that the gene stays
"not tested" rather than becoming normal by default: a gene PharmCAT did not call (call source NONE,
an "Unknown" allele, no diplotype and no phenotype), a gene absent from the report, an ambiguous
call (several diplotypes), and a report without a date.

A report names a sample, not a patient, and a sample id is not a patient identifier (taking one
for the other would file a genotype under the wrong patient): the identifier is given by whoever
imports the report (`azaguard import --patient`, `?patient=` on the REST API); without one the
report goes to quarantine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from azaguard import domain as d
from azaguard.ingest.items import Item, Parsed, Reject
from azaguard.knowledge import Knowledge

GENES = ("TPMT", "NUDT15")
THIOPURINES = ("azathioprine", "mercaptopurine", "thioguanine")
NO_PHENOTYPE = {"", "n/a", "no result", "unknown", "not called"}
# A quarantined gene is kept as the report's metadata and that gene's section, marked with this key,
# so re-processing it reads that gene alone (the report's other gene has its own item or row).
ONE_GENE = "azaguardQuarantinedGene"
MAX_DIPLOTYPE = 40  # genotypes.diplotype column: a longer call is refused, never cut
_V2_DATE = re.compile(r"^([A-Z][a-z]{2}) (\d{1,2}), (\d{4})")  # "Sep 22, 2023, 3:03:50 PM" (Java's default format)
_MONTHS = {
    m: n for n, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}


def looks_like_pharmcat(text: str) -> bool:
    """A JSON object PharmCAT wrote: its report keys, or a guideline annotation excerpt of one."""
    head = text.lstrip("\ufeff \r\n\t")[:4096]
    if not head.startswith("{") or '"resourceType"' in head:
        return False
    return any(key in head for key in ('"pharmcatVersion"', '"CPIC_GUIDELINE"', '"DPWG_GUIDELINE"'))


def parse_pharmcat_text(text: str, kb: Knowledge, source: str = "pharmcat", patient: str | None = None) -> Parsed:
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        return Parsed("pharmcat", [], [Reject(source, f"not valid JSON (line {exc.lineno}: {exc.msg})", text[:20000])])
    except (ValueError, RecursionError):
        return Parsed(
            "pharmcat", [], [Reject(source, "JSON too deeply nested or with a number too long", text[:20000])]
        )
    if not isinstance(report, dict):
        return Parsed("pharmcat", [], [Reject(source, "not a PharmCAT report (not a JSON object)", text[:20000])])
    calls = {gene: _calls(report, gene) for gene in GENES}
    if not any(calls.values()) and not isinstance(report.get("genes"), dict):
        why = "not a PharmCAT report: no 'genes' section and no TPMT or NUDT15 diplotype in any annotation"
        return Parsed("pharmcat", [], [Reject(source, why, text[:20000])])
    meta = _metadata(report)
    version = f"PharmCAT {meta['pharmcatVersion'] or 'version not stated'}, data {meta['dataVersion'] or 'not stated'}"
    whole = json.dumps({**_envelope(meta), "genes": {g: c[0][1] for g, c in calls.items() if c}}, indent=1)
    if not (patient or "").strip():
        why = (
            f"the report names a sample ('{meta['sample'][:40]}'), not a patient: import it with the patient's "
            "identifier (azaguard import --patient ID, or ?patient= on the REST API)"
        )
        return Parsed("pharmcat", [], [Reject(source, why, whole)])
    patient = (patient or "").strip()
    when = _date(meta["timestamp"])
    if when is None:
        why = f"the report has no readable timestamp ('{meta['timestamp'][:40]}'): when the test was done is unknown"
        return Parsed("pharmcat", [], [Reject(f"{source} ({version})", why, whole, patient)])
    items: list[Item] = []
    rejects: list[Reject] = []
    alone = report.get(ONE_GENE)
    for gene in GENES if alone not in GENES else (alone,):
        ref = f"{source} {gene} ({version})"
        found = calls[gene]
        original = json.dumps(
            {**_envelope(meta), "genes": {gene: found[0][1]} if found else {}, ONE_GENE: gene}, indent=1
        )
        result = _gene(gene, found, when, ref, original, patient, meta)
        if isinstance(result, Item):
            items.append(result)
        else:
            rejects.append(result)
    return Parsed("pharmcat", items, rejects)


def _metadata(report: dict[str, Any]) -> dict[str, str]:
    """What identifies the report and its provenance (also written into each quarantined original)."""
    found = report.get("matcherMetadata")
    matcher: dict[str, Any] = found if isinstance(found, dict) else {}
    data_version = next(
        (_text(report.get(k)) for k in ("dataVersion", "cpicVersion", "dpwgVersion") if _text(report.get(k))), ""
    )
    if not data_version:  # an annotation excerpt: its guidelines' data version
        data_version = next((v for v in _values(report, "version") if re.match(r"^\d{4}-\d{2}-\d{2}", v)), "")
    return {
        "title": _text(report.get("title")),
        "timestamp": _text(report.get("timestamp")) or _text(matcher.get("timestamp")),
        "pharmcatVersion": _text(report.get("pharmcatVersion")),
        "dataVersion": data_version,
        "sample": _text(matcher.get("sampleId")) or _text(report.get("title")) or "unnamed",
    }


def _envelope(meta: dict[str, str]) -> dict[str, Any]:
    """The metadata in PharmCAT's own keys, so a quarantined part of a report reads back the same."""
    return {
        "title": meta["title"], "timestamp": meta["timestamp"], "pharmcatVersion": meta["pharmcatVersion"],
        "dataVersion": meta["dataVersion"], "matcherMetadata": {"sampleId": meta["sample"]},
    }  # fmt: skip


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _values(node: Any, key: str) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _values(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _values(v, key)


def _gene_sections(report: dict[str, Any], gene: str) -> list[dict[str, Any]]:
    genes = report.get("genes")
    if not isinstance(genes, dict):
        return []
    if isinstance(genes.get(gene), dict):  # v3: keyed by gene
        return [genes[gene]]
    # v2: keyed by source, then gene; CPIC's call when there is one (DPWG words phenotypes its own way)
    found = [src.get(gene) for _, src in sorted(genes.items(), key=lambda kv: kv[0] != "CPIC") if isinstance(src, dict)]
    return [section for section in found if isinstance(section, dict)][:1]


def _calls(report: dict[str, Any], gene: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(diplotype, the section it came from) for each distinct call of `gene`: the gene section's
    source diplotypes, else those of the thiopurine annotations."""
    sections = _gene_sections(report, gene)
    if sections:
        out = []
        for section in sections:
            if section.get("callSource") == "NONE":
                out.append(({"label": "Unknown/Unknown", "phenotypes": [], "callSource": "NONE"}, _brief(section)))
                continue
            dips = section.get("sourceDiplotypes")
            for dip in dips if isinstance(dips, list) else []:
                if isinstance(dip, dict):
                    out.append((dip, _brief(section)))
            if not isinstance(dips, list) or not dips:
                out.append(({"label": "", "phenotypes": []}, _brief(section)))
        return _distinct(out)
    drugs = report.get("drugs")
    scope: Any = (
        [v.get(drug) for v in drugs.values() if isinstance(v, dict) for drug in THIOPURINES]
        if isinstance(drugs, dict)
        else [report.get("CPIC"), report.get("DPWG")]
    )
    # kept as a gene section of its own, so a quarantined call is re-read the same way
    found = [
        (dip, {"geneSymbol": gene, "sourceDiplotypes": [dip]}) for dip in _diplotypes(scope) if dip.get("gene") == gene
    ]
    return _distinct(found)


def _brief(section: dict[str, Any]) -> dict[str, Any]:
    """A gene section without its per-position variant calls (kept short in quarantine)."""
    return {k: v for k, v in section.items() if k not in ("variants", "relatedDrugs", "variantsOfInterest")}


def _diplotypes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("label"), str) and "gene" in node and "phenotypes" in node:
            yield node
            return
        for v in node.values():
            yield from _diplotypes(v)
    elif isinstance(node, list):
        for v in node:
            yield from _diplotypes(v)


def _distinct(calls: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    seen: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    for dip, section in calls:
        seen.setdefault((_text(dip.get("label")), json.dumps(dip.get("phenotypes"))), (dip, section))
    return list(seen.values())


def _phenotype(dip: dict[str, Any]) -> str | None:
    phenos = dip.get("phenotypes")
    names = [p.strip() for p in phenos if isinstance(p, str)] if isinstance(phenos, list) else []
    names = [p for p in names if p.lower() not in NO_PHENOTYPE]
    return names[0] if len(names) == 1 else None


def _gene(
    gene: str,
    calls: list[tuple[dict[str, Any], dict[str, Any]]],
    when: date,
    ref: str,
    original: str,
    patient: str,
    meta: dict[str, str],
) -> Item | Reject:
    stays = f"{gene} stays not tested"
    if not calls:
        return Reject(ref, f"{gene} is not in the report; {stays}", original, patient)
    if len(calls) > 1:
        labels = ", ".join(_text(dip.get("label")) or "?" for dip, _ in calls)
        return Reject(
            ref, f"PharmCAT reports {len(calls)} possible {gene} calls ({labels[:120]}); {stays}", original, patient
        )
    dip = calls[0][0]
    label = _text(dip.get("label"))
    phenotype = _phenotype(dip)
    if dip.get("callSource") == "NONE" or "unknown" in label.lower() or (not label and phenotype is None):
        return Reject(ref, f"PharmCAT did not call {gene} ('{label or 'no call'}'); {stays}", original, patient)
    diplotype = label if "/" in label and "*" in label else None
    if diplotype is not None and len(diplotype) > MAX_DIPLOTYPE:
        why = f"the {gene} call '{diplotype[:60]}' is longer than {MAX_DIPLOTYPE} characters; {stays}"
        return Reject(ref, why, original, patient)
    if diplotype is None and phenotype is None:
        why = f"the {gene} call '{label[:60]}' is neither a diplotype nor a single phenotype; {stays}"
        return Reject(ref, why, original, patient)
    key = f"pharmcat:{meta['sample']}:{meta['timestamp']}:{meta['pharmcatVersion']}:{meta['dataVersion']}:{gene}"
    return Item("genotype", patient, key, d.GenotypeResult(gene, diplotype, phenotype, when), ref, original)


def _date(value: str) -> date | None:
    """The report's timestamp: ISO 8601 (v3) or Java's default format (v2, "Sep 22, 2023, 3:03:50 PM")."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        pass
    m = _V2_DATE.match(value)
    if m and m.group(1) in _MONTHS:
        try:
            return date(int(m.group(3)), _MONTHS[m.group(1)], int(m.group(2)))
        except ValueError:
            return None
    return None
