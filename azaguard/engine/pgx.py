"""TPMT / NUDT15: diplotype or activity -> phenotype -> combined dosing category.

Phenotypes come from the shipped CPIC tables. An allele name CPIC has retired into another
(NUDT15 *2 -> *3) is read as its successor first (`pgx.allele_aliases`); a diplotype the table
does not list is called from allele function with CPIC's per-gene rules (`pgx.function_rules`),
where an allele with no function entry counts as uncertain, so the call is never Normal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from azaguard import domain as d
from azaguard.engine.context import Context
from azaguard.engine.findings import from_catalogue
from azaguard.knowledge import Knowledge

# Worse first: when two results disagree the worse one drives dosing (safer).
RANK = {p: i for i, p in enumerate(("PM", "IM", "Indeterminate", "NM"))}
LABEL = {
    "NM": "Normal Metabolizer",
    "IM": "Intermediate Metabolizer",
    "PM": "Poor Metabolizer",
    "Indeterminate": "Indeterminate",
}


Category = Literal["normal", "intermediate", "compound-intermediate", "poor", "indeterminate"]


@dataclass(frozen=True)
class GeneCall:
    gene: str
    phenotype: str | None  # NM, IM, PM, Indeterminate or None (not tested)
    detail: str
    genotype_call: str | None = None
    activity_call: str | None = None
    discordant: bool = False
    # The phenotype dosing uses when it differs from the reported one (an activity band the
    # laboratory leaves unassigned is reported as Indeterminate but dosed as its `dose_as`).
    dosed_as: str | None = None

    @property
    def for_dosing(self) -> str | None:
        return self.dosed_as or self.phenotype


def phenotype_from_text(text: str) -> str | None:
    """CPIC phenotype words (with or without the gene prefix) -> NM/IM/PM/Indeterminate."""
    low = text.lower()
    if "indeterminate" in low:
        return "Indeterminate"
    if "poor" in low or "deficient" in low:
        return "PM"
    if "intermediate" in low:  # includes "Possible Intermediate Metabolizer"
        return "IM"
    if "normal" in low or "extensive" in low:
        return "NM"
    return None


def read_diplotype(kb: Knowledge, gene: str, diplotype: str) -> tuple[list[str], list[str]] | None:
    """The two star alleles as CPIC names them today, and the notes of any alias applied; None
    when the text is not a diplotype of two star alleles."""
    alleles = [a.strip() for a in re.split(r"[/|]", diplotype.strip()) if a.strip()]
    if len(alleles) != 2 or not all(a.startswith("*") for a in alleles):
        return None
    aliases = {a.allele: a for a in kb.pgx.allele_aliases if a.gene == gene}
    read = [aliases[a].read_as if a in aliases else a for a in alleles]
    notes = list(dict.fromkeys(aliases[a].note for a in alleles if a in aliases))
    return read, notes


def phenotype_from_diplotype(kb: Knowledge, gene: str, diplotype: str) -> str | None:
    """Look the diplotype up in CPIC's table; derive it from allele function if it is not listed."""
    parsed = read_diplotype(kb, gene, diplotype)
    if parsed is None:
        return None
    alleles, _ = parsed
    table = kb.cpic[gene]
    for key in (f"{alleles[0]}/{alleles[1]}", f"{alleles[1]}/{alleles[0]}"):
        if key in table.diplotype_phenotype:
            return phenotype_from_text(table.diplotype_phenotype[key])
    rules = kb.pgx.function_rules
    a, b = (rules.classes.get(table.allele_function.get(x, ""), rules.unlisted) for x in alleles)
    return phenotype_from_text(rules.phenotype(gene, a, b))


def activity_band(kb: Knowledge, value: float, unit: str, method: str = "") -> tuple[str, str, str | None] | str:
    """(phenotype, label, dosed as) from the bands of the reporting laboratory's assay, or why not.

    Bands belong to one assay: a result is matched on the assay its method names *and* its unit,
    never on the unit alone (two assays reporting U/mL disagree about what is deficient).
    """
    unit_norm = unit.strip().lower()
    method_norm = method.strip().lower()
    same_unit = [t for t in kb.pgx.activity_units if unit_norm in (u.lower() for u in t.unit)]
    if not same_unit:
        return f"no laboratory assay in the knowledge base reports in '{unit}'"
    if not method_norm:
        labs = "; ".join(t.lab for t in same_unit)
        why = "the result does not name its laboratory's assay, and bands differ between assays"
        return f"{why} (known for {unit}: {labs})"
    for table in same_unit:
        if any(a.lower() in method_norm for a in table.assay):
            for band in table.bands:
                if band.low <= value < band.high:
                    return band.phenotype, f"{band.label}, {table.lab}", band.dose_as
            return f"{value:g} {unit} is outside every band of {table.lab}"
    return f"the assay '{method}' is not one whose bands the knowledge base holds"


def call_gene(ctx: Context, gene: str, findings: list[d.Finding]) -> GeneCall:
    kb = ctx.kb
    results = [g for g in ctx.record.genotypes if g.gene == gene and (g.when is None or g.when <= ctx.as_of)]
    geno_call = geno_detail = None
    if results:
        latest = max(results, key=lambda g: g.when or ctx.as_of)
        if latest.diplotype:
            geno_call = phenotype_from_diplotype(kb, gene, latest.diplotype)
            geno_detail = _diplotype_detail(kb, gene, latest.diplotype)
            if geno_call is None:
                findings.append(from_catalogue(kb, "data-unknown-allele", gene=gene, value=latest.diplotype))
        elif latest.phenotype:
            geno_call = phenotype_from_text(latest.phenotype)
            geno_detail = "reported phenotype"
            if geno_call is None:
                findings.append(from_catalogue(kb, "data-unknown-allele", gene=gene, value=latest.phenotype))
    act_call = act_detail = act_dose = None
    if gene == "TPMT":
        acts = [a for a in ctx.record.tpmt_activity if a.when <= ctx.as_of]
        if acts:
            a = acts[-1]
            band = activity_band(kb, a.value, a.unit, a.method)
            if isinstance(band, str):
                ev = ({"type": "pgx-activity", "value": a.value, "unit": a.unit, "date": a.when.isoformat()},)
                findings.append(
                    from_catalogue(
                        kb, "data-tpmt-activity-assay-unknown", ev, value=a.value, unit=a.unit, date=a.when, why=band
                    )
                )
            else:
                act_call, label, act_dose = band
                act_detail = f"activity {a.value:g} {a.unit}, {label}"
    # (reported phenotype, phenotype used for dosing, detail) of each usable result
    geno = (geno_call, geno_call, geno_detail) if geno_call else None
    act = (act_call, act_dose or act_call, act_detail) if act_call else None
    calls = [c for c in (geno, act) if c is not None]
    if not calls:
        return GeneCall(gene, None, "not tested")
    # CPIC: activity resolves an indeterminate genotype; otherwise the worse result drives dosing
    # (an unassigned activity is not ignored)
    pool = [act] if act is not None and geno_call == "Indeterminate" and act_call != "Indeterminate" else calls
    phenotype = min((c for c, _, _ in pool), key=RANK.__getitem__)
    dosed = min((dose for _, dose, _ in pool), key=RANK.__getitem__)
    discordant = len(calls) == 2 and geno_call != act_call and geno_call != "Indeterminate"
    detail = "; ".join(det for _, _, det in calls if det)
    return GeneCall(
        gene, phenotype, detail, geno_call, act_call, discordant, dosed_as=None if dosed == phenotype else dosed
    )


def _diplotype_detail(kb: Knowledge, gene: str, diplotype: str) -> str:
    """The diplotype as reported, and as read when an allele name has been retired (NUDT15 *2)."""
    parsed = read_diplotype(kb, gene, diplotype)
    if parsed is None or not parsed[1]:
        return diplotype
    alleles, notes = parsed
    return f"{diplotype}, read as {'/'.join(alleles)}: {'; '.join(notes)}"


def combined_category(tpmt: GeneCall, nudt15: GeneCall) -> Category | None:
    """Combined CPIC dosing category; None when TPMT is unknown (never assumed normal)."""
    t, n = tpmt.for_dosing, nudt15.for_dosing
    phen = {t, n}
    if "PM" in phen:
        return "poor"
    if t is None:
        return None
    if t == "IM" and n == "IM":
        return "compound-intermediate"
    if "IM" in phen:
        return "intermediate"
    if "Indeterminate" in phen:
        return "indeterminate"
    return "normal"


def stable_on_treatment(ctx: Context) -> bool:
    """Already taking a dose that has been stable into maintenance: CPIC's reduced doses are
    starting doses, so a tolerated dose is not cut for the genotype alone (poor metabolisers
    excepted: they are told to stop whatever the history)."""
    c = ctx.course
    return c.phase == "stable" and c.current_dose is not None


def check_pgx(ctx: Context) -> list[d.Finding]:
    kb = ctx.kb
    findings: list[d.Finding] = []
    tpmt = call_gene(ctx, "TPMT", findings)
    nudt15 = call_gene(ctx, "NUDT15", findings)
    category = combined_category(tpmt, nudt15)
    ctx.pgx = {"tpmt": tpmt, "nudt15": nudt15, "category": category}

    def label(c: GeneCall) -> str:
        return "not tested" if c.phenotype is None else f"{LABEL[c.phenotype]} ({c.detail})"

    evidence = tuple(
        {"type": "pgx", "gene": c.gene, "phenotype": c.phenotype, "detail": c.detail}
        for c in (tpmt, nudt15)
        if c.phenotype
    )
    if category is None:
        code = "pgx-tpmt-unknown" if ctx.course.phase in ("pre-treatment",) else "pgx-tpmt-unknown-on-treatment"
        if ctx.course.phase != "stopped":
            findings.append(from_catalogue(kb, code))
    elif category == "poor":
        sev = kb.pgx.combined[category].severity
        findings.append(from_catalogue(kb, "pgx-poor", evidence, severity=sev, tpmt=label(tpmt), nudt15=label(nudt15)))
    else:
        # An Indeterminate result always says how to resolve it, whatever dose the other gene gives.
        for call, code in ((tpmt, "pgx-indeterminate"), (nudt15, "pgx-nudt15-indeterminate")):
            if call.phenotype == "Indeterminate":
                findings.append(from_catalogue(kb, code, evidence, label=LABEL["Indeterminate"], detail=call.detail))
        if category == "indeterminate":
            pass  # the Indeterminate findings above carry the advice
        elif stable_on_treatment(ctx) and category != "normal":
            findings.append(
                from_catalogue(
                    kb, "pgx-reduced-on-treatment", evidence, tpmt=label(tpmt), nudt15=label(nudt15),
                    category=category.replace("-", " "), current=ctx.course.current_dose,
                )
            )  # fmt: skip
        else:
            sev = kb.pgx.combined[category].severity
            findings.append(
                from_catalogue(kb, f"pgx-{category}", evidence, severity=sev, tpmt=label(tpmt), nudt15=label(nudt15))
            )
    if tpmt.discordant:
        findings.append(
            from_catalogue(
                kb,
                "pgx-discordant",
                evidence,
                genotype=LABEL.get(tpmt.genotype_call or "", "?"),
                activity=LABEL.get(tpmt.activity_call or "", "?"),
            )
        )
    if nudt15.phenotype is None and category not in (None, "poor") and ctx.course.phase != "stopped":
        findings.append(from_catalogue(kb, "pgx-nudt15-unknown"))
    return findings
