"""Schema of the knowledge base.

The models are strict (unknown keys are errors) so that a typo in a knowledge or local
protocol file fails loudly at load time instead of silently dropping a safety rule.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from dateutil.relativedelta import relativedelta
from pydantic import BaseModel, ConfigDict, Field, model_validator

SeverityName = Literal["info", "warning", "critical"]


class Strict(BaseModel):
    # defer_build: schemas are built only when a file is actually validated, so a CLI run that
    # loads the cached, already-validated knowledge does not pay for building them.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Interval(Strict):
    """A calendar interval; months are calendar months (relativedelta), not 30 days."""

    days: int = 0
    weeks: int = 0
    months: int = 0

    @model_validator(mode="after")
    def _positive(self) -> Interval:
        if self.days < 0 or self.weeks < 0 or self.months < 0 or not (self.days or self.weeks or self.months):
            raise ValueError("an interval needs a positive number of days, weeks or months")
        return self

    def add(self, d: date, times: int = 1) -> date:
        return d + relativedelta(days=self.days * times, weeks=self.weeks * times, months=self.months * times)

    def sub(self, d: date, times: int = 1) -> date:
        return d - relativedelta(days=self.days * times, weeks=self.weeks * times, months=self.months * times)

    def label(self) -> str:
        parts = []
        for n, unit in ((self.months, "month"), (self.weeks, "week"), (self.days, "day")):
            if n:
                parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
        return " ".join(parts)


class Range(Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"range low {self.low} is above high {self.high}")
        return self


class Source(Strict):
    citation: str
    url: str | None = None


class Meta(Strict):
    id: str
    name: str
    version: str
    drug: str
    released: str
    cpic_data_version: str


class Indication(Strict):
    label: str
    snomed: list[str]
    text: list[str]
    licensed_uk: bool
    time_to_benefit: str
    time_to_benefit_months: Range
    sources: list[str]


class RenalRule(Strict):
    egfr_below: float
    sources: list[str]


class HepaticRule(Strict):
    sources: list[str]


class StepIntervals(Strict):
    normal: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    poor: int = Field(gt=0)


class Dosing(Strict):
    target_mg_per_kg: Range
    max_mg_per_kg: float = Field(gt=0)
    max_mg_per_day: float = Field(gt=0)
    start_mg_per_day: float = Field(gt=0)
    step_mg: float = Field(gt=0)
    tablet_strengths_mg: list[float] = Field(min_length=1)
    sources: list[str]
    alternatives: str = ""
    step_interval_weeks: StepIntervals
    step_interval_sources: list[str]
    renal: RenalRule
    hepatic: HepaticRule

    @model_validator(mode="after")
    def _caps(self) -> Dosing:
        if self.target_mg_per_kg.high > self.max_mg_per_kg:
            raise ValueError("target_mg_per_kg.high exceeds max_mg_per_kg")
        return self


class CombinedPhenotype(Strict):
    fraction: Range | None = None
    avoid: bool = False
    severity: SeverityName
    steady_state_weeks: int
    sources: list[str]

    @model_validator(mode="after")
    def _fraction_or_avoid(self) -> CombinedPhenotype:
        if self.avoid == (self.fraction is not None):
            raise ValueError("give either a dose fraction or avoid = true")
        if self.fraction is not None and (self.fraction.high > 1.0 or self.fraction.low <= 0):
            raise ValueError("dose fraction must be within (0, 1]")
        return self


class ActivityBand(Strict):
    low: float
    high: float
    phenotype: Literal["NM", "IM", "PM", "Indeterminate"]
    label: str


class ActivityUnit(Strict):
    unit: list[str]
    sources: list[str]
    bands: list[ActivityBand]

    @model_validator(mode="after")
    def _contiguous(self) -> ActivityUnit:
        for a, b in zip(self.bands, self.bands[1:], strict=False):
            if a.high != b.low:
                raise ValueError(f"activity bands for {self.unit[0]} are not contiguous at {a.high}")
        return self


class Pgx(Strict):
    alternatives: str = ""
    combined: dict[
        Literal["normal", "intermediate", "compound-intermediate", "poor", "indeterminate"], CombinedPhenotype
    ]
    activity_units: list[ActivityUnit]


class Schedule(Strict):
    initial_interval: Interval
    stable_after: Interval
    consolidation_interval: Interval
    consolidation_duration: Interval
    maintenance_interval: Interval
    missed_visits_critical: int = Field(ge=1)
    groups: list[str]
    sources: list[str]
    alternatives: str = ""


class Threshold(Strict):
    id: str
    analyte: str
    comparator: Literal["<", ">"]
    value: float
    severity: SeverityName
    ctcae: str | None = None
    message: str
    action: str
    patient_text: str
    sources: list[str]
    alternatives: str = ""


class Rise(Strict):
    id: str
    analyte: str
    rise_fraction: float = Field(gt=0)
    window: Interval
    severity: SeverityName
    message: str
    action: str
    patient_text: str
    sources: list[str]


class Trend(Strict):
    id: str
    analytes: list[str]
    fall_fraction: float = Field(gt=0, lt=1)
    successive_falls: int = Field(ge=1)
    severity: SeverityName
    message: str
    action: str
    patient_text: str
    sources: list[str]
    alternatives: str = ""


class CtcaeGrade(Strict):
    grade: int
    limit: float


class Ctcae(Strict):
    term: str
    direction: Literal["low", "high_uln"]
    grades: list[CtcaeGrade]
    sources: list[str]


class Analyte(Strict):
    label: str
    group: str
    canonical: str
    loinc: list[str]
    local: list[str] = []
    text: list[str] = []


class PgxCodes(Strict):
    genotype_loinc: list[str]
    gene_component_loinc: list[str]
    phenotype_loinc: list[str]
    tpmt_activity_loinc: list[str]
    genes: dict[str, list[str]]


class StatusCodes(Strict):
    pregnancy_loinc: list[str]
    pregnant_answers: list[str]
    not_pregnant_answers: list[str]
    breastfeeding_loinc: list[str]
    breastfeeding_answers: list[str]
    not_breastfeeding_answers: list[str]
    pregnancy_intention_loinc: list[str]


class Drug(Strict):
    rxnorm: list[str]
    names: list[str]
    verified: bool = True


class Interaction(Strict):
    id: str
    drugs: list[str]
    severity: SeverityName
    dose_factor: float | None = Field(default=None, gt=0, le=1)
    avoid: bool = False
    mechanism: str
    message: str
    action: str
    patient_text: str
    sources: list[str]
    alternatives: str = ""


class ConditionRule(Strict):
    snomed: list[str]
    text: list[str]
    finding: str


class AllergyRule(Strict):
    drugs: list[str]
    finding: str


class VaccineDef(Strict):
    cvx: list[str]
    names: list[str]


class Vaccines(Strict):
    live_washout: Interval
    live_washout_sources: list[str]
    live_washout_alternatives: str = ""
    influenza_interval: Interval
    live: dict[str, VaccineDef]
    inactivated: dict[str, VaccineDef]


class SymptomDef(Strict):
    snomed: list[str]
    text: list[str]
    severity: SeverityName
    marrow: bool = False
    group: str = "FBC"


class Symptoms(Strict):
    neutropenic_fever_below: float
    sources_default: list[str]
    items: dict[str, SymptomDef]


class Reproduction(Strict):
    pregnancy_max_mg_per_kg: float
    pregnancy_sources: list[str]
    breastfeeding_max_mg_per_day: float
    breastfeeding_sources: list[str]


class Metabolites(Strict):
    tgn_low: float
    tgn_high: float
    mmp_high: float
    mmp_tgn_ratio: float
    check_after_change: Interval
    check_after_start: Interval
    check_every: Interval
    sources: list[str]


class Efficacy(Strict):
    counsel_until: Interval
    default_time_to_benefit: str
    default_time_to_benefit_months: Range
    seed_claim: str
    sources: list[str]


class FindingText(Strict):
    category: str
    severity: SeverityName
    message: str
    action: str
    patient_text: str
    sources: list[str]
