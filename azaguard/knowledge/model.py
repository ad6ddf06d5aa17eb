"""Schema of the knowledge base.

Plain frozen dataclasses, validated by pydantic (TypeAdapter) when the files are loaded:
strict, with unknown keys as errors, so a typo in a knowledge or local protocol file fails
loudly instead of silently dropping a safety rule. Keeping them stdlib dataclasses means the
engine that uses them never depends on pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from dateutil.relativedelta import relativedelta

SeverityName = Literal["info", "warning", "critical"]
STRICT: dict[str, Any] = {"extra": "forbid"}


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0")


@dataclass(frozen=True, kw_only=True)
class Interval:
    __pydantic_config__ = STRICT
    """A calendar interval; months are calendar months (relativedelta), not 30 days."""

    days: int = 0
    weeks: int = 0
    months: int = 0

    def __post_init__(self) -> None:
        if self.days < 0 or self.weeks < 0 or self.months < 0 or not (self.days or self.weeks or self.months):
            raise ValueError("an interval needs a positive number of days, weeks or months")

    def add(self, d: date, times: int = 1) -> date:
        try:
            if not self.months:  # whole days: the same date as relativedelta gives, at a tenth of its cost
                return d + timedelta(days=(self.days + 7 * self.weeks) * times)
            return d + relativedelta(days=self.days * times, weeks=self.weeks * times, months=self.months * times)
        except (OverflowError, ValueError):
            return date.max  # beyond the calendar: "never" is the only meaningful answer

    def sub(self, d: date, times: int = 1) -> date:
        try:
            if not self.months:
                return d - timedelta(days=(self.days + 7 * self.weeks) * times)
            return d - relativedelta(days=self.days * times, weeks=self.weeks * times, months=self.months * times)
        except (OverflowError, ValueError):
            return date.min

    def label(self) -> str:
        parts = []
        for n, unit in ((self.months, "month"), (self.weeks, "week"), (self.days, "day")):
            if n:
                parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class FollowUpRule:
    """The repeat test a finding's action asks for, as data: which test group, within how many
    days of the finding's date, and which analytes answer it (empty = a complete panel).
    `sources` says where the interval comes from when it is not the rule's own source."""

    __pydantic_config__ = STRICT
    group: str
    days: int
    answered_by: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        if self.days < 0:
            raise ValueError("follow_up.days must be 0 or more")


@dataclass(frozen=True, kw_only=True)
class Range:
    __pydantic_config__ = STRICT
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"range low {self.low} is above high {self.high}")


@dataclass(frozen=True, kw_only=True)
class Source:
    __pydantic_config__ = STRICT
    citation: str
    url: str | None = None


@dataclass(frozen=True, kw_only=True)
class Meta:
    __pydantic_config__ = STRICT
    id: str
    name: str
    version: str
    drug: str
    released: str
    cpic_data_version: str


@dataclass(frozen=True, kw_only=True)
class Indication:
    __pydantic_config__ = STRICT
    label: str
    snomed: list[str]
    text: list[str]
    licensed_uk: bool
    time_to_benefit: str
    time_to_benefit_months: Range
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class OtherIndication:
    """An indication outside neuromuscular disease: recognised (never "no indication"), with the
    note that this protocol's dosing and time-to-benefit advice were written for NMD."""

    __pydantic_config__ = STRICT
    label: str
    snomed: list[str]
    text: list[str]


@dataclass(frozen=True, kw_only=True)
class RenalRule:
    __pydantic_config__ = STRICT
    egfr_below: float
    # A single low eGFR asks for a repeat; this many successive results below the limit reduce the dose.
    sustained_results: int
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class HepaticRule:
    __pydantic_config__ = STRICT
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class StepIntervals:
    __pydantic_config__ = STRICT
    normal: int
    intermediate: int
    poor: int

    def __post_init__(self) -> None:
        for name in ("normal", "intermediate", "poor"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class Dosing:
    __pydantic_config__ = STRICT
    target_mg_per_kg: Range
    max_mg_per_kg: float
    max_mg_per_day: float
    start_mg_per_day: float
    step_mg: float
    tablet_strengths_mg: list[float]
    sources: list[str]
    alternatives: str = ""
    step_interval_weeks: StepIntervals
    step_interval_sources: list[str]
    renal: RenalRule
    hepatic: HepaticRule

    def __post_init__(self) -> None:
        for name in ("max_mg_per_kg", "max_mg_per_day", "start_mg_per_day", "step_mg"):
            _positive(name, getattr(self, name))
        if not self.tablet_strengths_mg or min(self.tablet_strengths_mg) <= 0:
            raise ValueError("tablet_strengths_mg needs at least one positive strength")
        if self.target_mg_per_kg.high > self.max_mg_per_kg:
            raise ValueError("target_mg_per_kg.high exceeds max_mg_per_kg")


@dataclass(frozen=True, kw_only=True)
class CombinedPhenotype:
    __pydantic_config__ = STRICT
    fraction: Range | None = None
    avoid: bool = False
    severity: SeverityName
    steady_state_weeks: int
    sources: list[str]
    # CPIC's classification of the recommendation (2025 update: both genes intermediate is Moderate)
    strength: Literal["Strong", "Moderate", "Optional"] | None = None
    alternatives: str = ""

    def __post_init__(self) -> None:
        if self.avoid == (self.fraction is not None):
            raise ValueError("give either a dose fraction or avoid = true")
        if self.fraction is not None and (self.fraction.high > 1.0 or self.fraction.low <= 0):
            raise ValueError("dose fraction must be within (0, 1]")


@dataclass(frozen=True, kw_only=True)
class ActivityBand:
    __pydantic_config__ = STRICT
    low: float
    high: float
    phenotype: Literal["NM", "IM", "PM", "Indeterminate"]
    label: str
    # A band the laboratory leaves unassigned is reported as such but dosed as this phenotype:
    # a measured low activity is not CPIC's Indeterminate genotype (which gets the standard dose).
    dose_as: Literal["NM", "IM", "PM"] | None = None


@dataclass(frozen=True, kw_only=True)
class ActivityUnit:
    """Bands of one laboratory assay. An activity is interpreted only when its reported method
    names this assay (`assay`, case-insensitive substring) and its unit is one of `unit`: two
    assays with the same unit have different cut-offs and must never share bands."""

    __pydantic_config__ = STRICT
    assay: list[str]
    lab: str
    unit: list[str]
    sources: list[str]
    bands: list[ActivityBand]

    def __post_init__(self) -> None:
        for a, b in zip(self.bands, self.bands[1:], strict=False):
            if a.high != b.low:
                raise ValueError(f"activity bands for {self.unit[0]} are not contiguous at {a.high}")


@dataclass(frozen=True, kw_only=True)
class AlleleAlias:
    """A star-allele name a laboratory may still report that CPIC has folded into another allele
    (NUDT15 *2 is now part of *3): read as `read_as` before the CPIC table is consulted."""

    __pydantic_config__ = STRICT
    gene: str
    allele: str
    read_as: str
    note: str
    sources: list[str]


FunctionClass = Literal["normal", "decreased", "none", "uncertain"]
CpicPhenotype = Literal[
    "Normal Metabolizer",
    "Intermediate Metabolizer",
    "Possible Intermediate Metabolizer",
    "Poor Metabolizer",
    "Indeterminate",
]
FUNCTION_CLASSES: tuple[FunctionClass, ...] = ("normal", "decreased", "none", "uncertain")


@dataclass(frozen=True, kw_only=True)
class FunctionRules:
    """CPIC's rules for a diplotype its table does not list: each allele's clinical function gives
    its class (`classes`; an allele with no function entry is `unlisted`), and the unordered pair
    of classes gives the phenotype, per gene (`genes[gene][class_a][class_b]`, each pair once)."""

    __pydantic_config__ = STRICT
    classes: dict[str, FunctionClass]
    unlisted: FunctionClass
    genes: dict[str, dict[FunctionClass, dict[FunctionClass, CpicPhenotype]]]
    sources: list[str]
    note: str = ""

    def __post_init__(self) -> None:
        for gene, rules in self.genes.items():
            for a_i, a in enumerate(FUNCTION_CLASSES):
                for b in FUNCTION_CLASSES[a_i:]:
                    found = [p for x, y in {(a, b), (b, a)} if (p := rules.get(x, {}).get(y)) is not None]
                    if len(found) != 1:
                        raise ValueError(f"function rules for {gene}: give {a} + {b} exactly once")

    def phenotype(self, gene: str, a: FunctionClass, b: FunctionClass) -> CpicPhenotype:
        rules = self.genes[gene]
        return rules.get(a, {}).get(b) or rules[b][a]


@dataclass(frozen=True, kw_only=True)
class Pgx:
    __pydantic_config__ = STRICT
    alternatives: str = ""
    combined: dict[
        Literal["normal", "intermediate", "compound-intermediate", "poor", "indeterminate"], CombinedPhenotype
    ]
    activity_units: list[ActivityUnit]
    allele_aliases: list[AlleleAlias] = field(default_factory=list)
    function_rules: FunctionRules


@dataclass(frozen=True, kw_only=True)
class Panel:
    """What makes one test group complete on one date: every entry of `require` must be met,
    and an entry is met by any one of its analytes (["alt", "ast"] = ALT or AST)."""

    __pydantic_config__ = STRICT
    require: list[list[str]]
    sources: list[str]
    label: str = ""  # how pages name the panel ("full blood count"); empty: the group's key

    def __post_init__(self) -> None:
        if not self.require or any(not alt for alt in self.require):
            raise ValueError("a panel needs at least one required analyte")


@dataclass(frozen=True, kw_only=True)
class Restart:
    """What must be true before a withheld course restarts, shown instead of a titration plan."""

    __pydantic_config__ = STRICT
    criteria: list[str]
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class RiskReview:
    __pydantic_config__ = STRICT
    every: Interval
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class LowRisk:
    """An extended maintenance interval for stable patients with no result beyond a limit in
    `stable_for`; off unless a protocol enables it (its source is stated in `status`)."""

    __pydantic_config__ = STRICT
    enabled: bool
    interval: Interval
    stable_for: Interval
    status: str
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class Schedule:
    __pydantic_config__ = STRICT
    initial_interval: Interval
    stable_after: Interval
    consolidation_interval: Interval
    consolidation_duration: Interval
    maintenance_interval: Interval
    missed_visits_critical: int
    groups: list[str]
    sources: list[str]
    alternatives: str = ""
    # Dose events that restart the 2-weekly sequence ("start" always does)
    restart_sequence_on: list[Literal["dose-increase", "dose-reduction", "restart-after-hold"]]
    restart_sequence_sources: list[str]
    panels: dict[str, Panel]
    restart: Restart
    risk_review: RiskReview
    low_risk: LowRisk

    def __post_init__(self) -> None:
        _positive("missed_visits_critical", self.missed_visits_critical)


@dataclass(frozen=True, kw_only=True)
class Threshold:
    __pydantic_config__ = STRICT
    id: str
    analyte: str
    comparator: Literal["<", ">"]
    value: float
    severity: SeverityName
    ctcae: str | None = None
    # CTCAE grade -> severity from that grade up (anaemia grade 3 is critical)
    grade_severity: dict[int, SeverityName] = field(default_factory=dict)
    message: str
    action: str
    patient_text: str
    sources: list[str]
    alternatives: str = ""
    follow_up: FollowUpRule | None = None


@dataclass(frozen=True, kw_only=True)
class UlnRule:
    """A result graded in multiples of the laboratory's upper limit of normal (CTCAE v5):
    `min_grade` and above raise a finding at `severity`, grade 4 at `grade4_severity`."""

    __pydantic_config__ = STRICT
    id: str
    analyte: str
    ctcae: str
    min_grade: int
    severity: SeverityName
    grade4_severity: SeverityName
    message: str
    action: str
    patient_text: str
    sources: list[str]
    alternatives: str = ""
    follow_up: FollowUpRule | None = None


@dataclass(frozen=True, kw_only=True)
class Rise:
    __pydantic_config__ = STRICT
    id: str
    analyte: str
    rise_fraction: float
    window: Interval
    severity: SeverityName
    message: str
    action: str
    patient_text: str
    sources: list[str]
    follow_up: FollowUpRule | None = None

    def __post_init__(self) -> None:
        _positive("rise_fraction", self.rise_fraction)


@dataclass(frozen=True, kw_only=True)
class Trend:
    __pydantic_config__ = STRICT

    def __post_init__(self) -> None:
        if not 0 < self.fall_fraction < 1:
            raise ValueError("fall_fraction must be between 0 and 1")
        _positive("successive_falls", self.successive_falls)

    id: str
    analytes: list[str]
    fall_fraction: float
    successive_falls: int
    severity: SeverityName
    message: str
    action: str
    patient_text: str
    sources: list[str]
    alternatives: str = ""
    follow_up: FollowUpRule | None = None


@dataclass(frozen=True, kw_only=True)
class CtcaeGrade:
    __pydantic_config__ = STRICT
    grade: int
    limit: float


@dataclass(frozen=True, kw_only=True)
class Ctcae:
    __pydantic_config__ = STRICT
    term: str
    direction: Literal["low", "high_uln"]
    grades: list[CtcaeGrade]
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class Analyte:
    __pydantic_config__ = STRICT
    label: str
    group: str
    canonical: str
    loinc: list[str]
    local: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    deprecated_loinc: list[str] = field(default_factory=list)
    drop_if_other_same_day: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class PgxCodes:
    __pydantic_config__ = STRICT
    genotype_loinc: list[str]
    gene_component_loinc: list[str]
    phenotype_loinc: list[str]
    tpmt_activity_loinc: list[str]
    genes: dict[str, list[str]]


@dataclass(frozen=True, kw_only=True)
class StatusCodes:
    __pydantic_config__ = STRICT
    pregnancy_loinc: list[str]
    pregnant_answers: list[str]
    not_pregnant_answers: list[str]
    breastfeeding_loinc: list[str]
    breastfeeding_answers: list[str]
    not_breastfeeding_answers: list[str]
    pregnancy_intention_loinc: list[str]
    positive_answers: list[str]
    negative_answers: list[str]
    no_answers: list[str]
    # HL7 v3 ObservationInterpretation codes that say positive / negative (quantitative serology)
    interpretation_positive: list[str] = field(default_factory=list)
    interpretation_negative: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Drug:
    __pydantic_config__ = STRICT
    rxnorm: list[str]
    names: list[str]
    verified: bool = True


@dataclass(frozen=True, kw_only=True)
class Product:
    """An RxNorm clinical drug (SCD): which medicine it is and, for a single-ingredient tablet, its
    strength, so an order written in tablets ("{pill}", as EHR order screens write it) becomes mg."""

    __pydantic_config__ = STRICT
    drug: str
    name: str
    mg: float | None = None  # strength per tablet; None for a combination product

    def __post_init__(self) -> None:
        if self.mg is not None and not self.mg > 0:
            raise ValueError("mg must be positive")


@dataclass(frozen=True, kw_only=True)
class OrderCode:
    """The LOINC order code of a test group, for an order a card suggests (ServiceRequest.code)."""

    __pydantic_config__ = STRICT
    loinc: str
    display: str
    sources: list[str]
    verified: bool = True


@dataclass(frozen=True, kw_only=True)
class Products:
    __pydantic_config__ = STRICT
    sources: list[str]
    codes: dict[str, Product]


@dataclass(frozen=True, kw_only=True)
class Interaction:
    __pydantic_config__ = STRICT

    def __post_init__(self) -> None:
        if self.dose_factor is not None and not 0 < self.dose_factor <= 1:
            raise ValueError("dose_factor must be within (0, 1]")

    id: str
    drugs: list[str]
    severity: SeverityName
    dose_factor: float | None = None
    avoid: bool = False
    # The factor applies to the patient's own dose before the combination started (SmPC: "a
    # quarter of the original dose"), not to the weight-based target.
    mechanism: str
    message: str
    action: str
    patient_text: str
    sources: list[str]
    alternatives: str = ""
    follow_up: FollowUpRule | None = None


@dataclass(frozen=True, kw_only=True)
class ConditionRule:
    __pydantic_config__ = STRICT
    snomed: list[str]
    text: list[str]
    finding: str
    blocks_dosing: bool = False


@dataclass(frozen=True, kw_only=True)
class AllergyRule:
    __pydantic_config__ = STRICT
    drugs: list[str]
    finding: str
    blocks_dosing: bool = False


@dataclass(frozen=True, kw_only=True)
class VaccineDef:
    __pydantic_config__ = STRICT
    cvx: list[str]
    names: list[str]


@dataclass(frozen=True, kw_only=True)
class Vaccines:
    __pydantic_config__ = STRICT
    live_washout: Interval
    live_washout_sources: list[str]
    live_washout_alternatives: str = ""
    influenza_interval: Interval
    generic_words: list[str]
    live: dict[str, VaccineDef]
    inactivated: dict[str, VaccineDef]
    # Codes that may be a live vaccine (e.g. zoster, unspecified formulation): ask, never assume
    uncertain: dict[str, VaccineDef] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SymptomDef:
    __pydantic_config__ = STRICT
    snomed: list[str]
    text: list[str]
    severity: SeverityName
    marrow: bool = False
    group: str = "FBC"
    exclude: list[str] = field(default_factory=list)
    # Results that answer the question the symptom raised (fever -> a count with neutrophils);
    # any other result, however recent, leaves the report open.
    answered_by: list[str] = field(default_factory=list)
    follow_up_days: int = 0
    label: str = ""  # the plain name a patient chooses on the symptom form ("Yellow skin or eyes")


@dataclass(frozen=True, kw_only=True)
class Symptoms:
    __pydantic_config__ = STRICT
    neutropenic_fever_below: float
    # A reaction within this time of starting or restarting may be azathioprine hypersensitivity
    hypersensitivity_within: Interval
    hypersensitivity_symptoms: list[str]
    hypersensitivity_sources: list[str]
    sources_default: list[str]
    items: dict[str, SymptomDef]
    emergency: Emergency | None = None


@dataclass(frozen=True, kw_only=True)
class Reproduction:
    __pydantic_config__ = STRICT
    pregnancy_max_mg_per_kg: float
    pregnancy_sources: list[str]
    breastfeeding_max_mg_per_day: float
    breastfeeding_sources: list[str]


@dataclass(frozen=True, kw_only=True)
class Metabolites:
    __pydantic_config__ = STRICT
    tgn_low: float
    tgn_high: float
    mmp_high: float
    mmp_tgn_ratio: float
    check_after_change: Interval
    check_after_start_from: Interval
    check_after_start: Interval
    check_every: Interval
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class Efficacy:
    __pydantic_config__ = STRICT
    counsel_until: Interval
    default_time_to_benefit: str
    default_time_to_benefit_months: Range
    seed_claim: str
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class FindingText:
    __pydantic_config__ = STRICT
    category: str
    severity: SeverityName
    message: str
    action: str
    patient_text: str
    sources: list[str]
    follow_up: FollowUpRule | None = None


@dataclass(frozen=True, kw_only=True)
class GuideSection:
    __pydantic_config__ = STRICT
    id: str
    title: str
    text: str
    seed_claim: str
    correction: str = ""
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class ScreeningItem:
    __pydantic_config__ = STRICT
    finding: str
    group: str | None = None
    tests: list[str] = field(default_factory=list)
    vaccines: list[str] = field(default_factory=list)
    vaccines_all: list[str] = field(default_factory=list)
    sex: str | None = None

    def __post_init__(self) -> None:
        if not (self.group or self.tests or self.vaccines or self.vaccines_all):
            raise ValueError("a screening item needs a group, tests or vaccines that satisfy it")


@dataclass(frozen=True, kw_only=True)
class ScreeningResult:
    __pydantic_config__ = STRICT
    test: str
    when: Literal["positive", "negative"]
    finding: str


@dataclass(frozen=True, kw_only=True)
class GuideArticle:
    """The article the patient guide grew from and corrects (guide.toml [article]); each correction box names it."""

    __pydantic_config__ = STRICT
    title: str
    author: str
    published: date
    source: str  # its key in sources.toml


@dataclass(frozen=True, kw_only=True)
class EmergencySign:
    __pydantic_config__ = STRICT
    text: str
    sources: list[str]


@dataclass(frozen=True, kw_only=True)
class Emergency:
    """When a patient must call 999 or go to A&E instead of reporting to the clinic (safety.toml
    [symptoms.emergency]): shown on the symptom form before sending and with the confirmation."""

    __pydantic_config__ = STRICT
    lead: str
    signs: list[EmergencySign]
    note: str = ""
    note_sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WorkingCalendar:
    """The days a blood test can be booked: not a weekend day, not a public holiday. Pure data.

    Built once at start-up (azaguard.knowledge.calendar, from the maintained `holidays` package and
    the clinic's setting); the engine only reads it, so an assessment stays a pure function of
    (record, knowledge, as_of). Holidays are known for `first_year`..`last_year`; outside those
    years only weekends count.
    """

    code: str  # "GB-ENG": ISO 3166 country and optional subdivision, as configured
    weekend: frozenset[int]  # date.weekday() numbers (5, 6 = Saturday, Sunday)
    holidays: dict[date, str]  # public holiday -> its name
    first_year: int
    last_year: int

    def closed(self, day: date) -> str | None:
        """Why no blood test is booked on `day` (the holiday's name, or "weekend"); None on a working day."""
        name = self.holidays.get(day)
        if name is not None:
            return name
        return "weekend" if day.weekday() in self.weekend else None
