"""Build FHIR R4 resources in the shapes the reader documents (docs/codes.md).

Used by the example generator, the tests and the synthetic clinic, so all three speak exactly
the FHIR that real integrators are told to send.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from azaguard.readers.fhir import CVX, LOINC, RXNORM, SNOMED, UCUM

Resource = dict[str, Any]


class BundleBuilder:
    def __init__(
        self, patient_id: str, birth_date: str | None = None, gender: str | None = None, name: str | None = None
    ):
        self.patient_id = patient_id
        self.entries: list[Resource] = []
        self._n = 0
        patient: Resource = {"resourceType": "Patient", "id": patient_id}
        if birth_date:
            patient["birthDate"] = birth_date
        if gender:
            patient["gender"] = gender
        if name:
            given, _, family = name.rpartition(" ")
            patient["name"] = [{"given": [given] if given else [], "family": family}]
        self.entries.append(patient)

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    def _subject(self) -> Resource:
        return {"reference": f"Patient/{self.patient_id}"}

    def add(self, resource: Resource) -> BundleBuilder:
        self.entries.append(resource)
        return self

    def bundle(self) -> Resource:
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r} for r in self.entries],
        }

    # ------------------------------------------------------------ observations
    def lab(
        self,
        loinc: str,
        value: float,
        unit: str,
        when: str | date,
        display: str = "",
        ucum: bool = True,
        ref_low: float | None = None,
        ref_high: float | None = None,
        status: str = "final",
    ) -> BundleBuilder:
        q: Resource = {"value": value, "unit": unit}
        if ucum:
            q.update({"system": UCUM, "code": unit})
        obs: Resource = {
            "resourceType": "Observation",
            "id": self._id("lab"),
            "status": status,
            "category": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
                    ]
                }
            ],
            "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
            "subject": self._subject(),
            "effectiveDateTime": str(when),
            "valueQuantity": q,
        }
        if ref_low is not None or ref_high is not None:
            rr: Resource = {}
            if ref_low is not None:
                rr["low"] = {"value": ref_low, "unit": unit}
            if ref_high is not None:
                rr["high"] = {"value": ref_high, "unit": unit}
            obs["referenceRange"] = [rr]
        return self.add(obs)

    def fbc(
        self,
        when: str | date,
        wbc: float,
        neut: float,
        plt: float,
        lymph: float | None = None,
        mcv: float | None = None,
    ) -> BundleBuilder:
        self.lab("6690-2", wbc, "10*9/L", when, "Leukocytes")
        self.lab("751-8", neut, "10*9/L", when, "Neutrophils")
        self.lab("777-3", plt, "10*9/L", when, "Platelets")
        if lymph is not None:
            self.lab("731-0", lymph, "10*9/L", when, "Lymphocytes")
        if mcv is not None:
            self.lab("787-2", mcv, "fL", when, "MCV")
        return self

    def lft(self, when: str | date, alt: float, albumin: float | None = None) -> BundleBuilder:
        self.lab("1742-6", alt, "U/L", when, "ALT")
        if albumin is not None:
            self.lab("1751-7", albumin, "g/L", when, "Albumin")
        return self

    def renal(self, when: str | date, creatinine: float, egfr: float | None = None) -> BundleBuilder:
        self.lab("2160-0", creatinine, "umol/L", when, "Creatinine")
        if egfr is not None:
            self.lab("98979-8", egfr, "mL/min/{1.73_m2}", when, "eGFR")
        return self

    def bloods(
        self,
        when: str | date,
        wbc: float = 6.0,
        neut: float = 3.5,
        plt: float = 250,
        alt: float = 25,
        creat: float = 75,
    ) -> BundleBuilder:
        return self.fbc(when, wbc, neut, plt, lymph=1.8, mcv=92).lft(when, alt, albumin=42).renal(when, creat, egfr=90)

    def weight(self, kg: float, when: str | date) -> BundleBuilder:
        return self.lab("29463-7", kg, "kg", when, "Body weight")

    def genotype(self, gene: str, value: str, when: str | date) -> BundleBuilder:
        hgnc = {"TPMT": "HGNC:12014", "NUDT15": "HGNC:23063"}[gene]
        return self.add(
            {
                "resourceType": "Observation",
                "id": self._id("pgx"),
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "84413-4", "display": "Genotype display name"}]},
                "subject": self._subject(),
                "effectiveDateTime": str(when),
                "valueCodeableConcept": {"text": value},
                "component": [
                    {
                        "code": {"coding": [{"system": LOINC, "code": "48018-6", "display": "Gene studied [ID]"}]},
                        "valueCodeableConcept": {
                            "coding": [{"system": "http://www.genenames.org/geneId", "code": hgnc, "display": gene}]
                        },
                    }
                ],
            }
        )

    def phenotype(self, gene: str, text: str, when: str | date) -> BundleBuilder:
        hgnc = {"TPMT": "HGNC:12014", "NUDT15": "HGNC:23063"}[gene]
        return self.add(
            {
                "resourceType": "Observation",
                "id": self._id("pgx"),
                "status": "final",
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "53040-2", "display": "Genetic variation's effect on drug metabolism"}
                    ]
                },
                "subject": self._subject(),
                "effectiveDateTime": str(when),
                "valueCodeableConcept": {"text": text},
                "component": [
                    {
                        "code": {"coding": [{"system": LOINC, "code": "48018-6"}]},
                        "valueCodeableConcept": {
                            "coding": [{"system": "http://www.genenames.org/geneId", "code": hgnc, "display": gene}]
                        },
                    }
                ],
            }
        )

    def tpmt_activity(self, value: float, unit: str, when: str | date, method: str | None = None) -> BundleBuilder:
        """`method` is Observation.method.text: the laboratory's assay, which decides its bands."""
        res: Resource = {
            "resourceType": "Observation",
            "id": self._id("tpmt"),
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "21563-2", "display": "TPMT RBC activity"}]},
            "subject": self._subject(),
            "effectiveDateTime": str(when),
            "valueQuantity": {"value": value, "unit": unit},
        }
        if method:
            res["method"] = {"text": method}
        return self.add(res)

    def metabolites(self, tgn: float, mmp: float, when: str | date, mmp_below_detection: bool = False) -> BundleBuilder:
        for code, text, value, below in (("6-tgn", "6-TGN", tgn, False), ("6-mmp", "6-MMP", mmp, mmp_below_detection)):
            q: Resource = {"value": value, "unit": "pmol/8x10^8 RBC"}
            if below:
                q["comparator"] = "<"
            self.add(
                {
                    "resourceType": "Observation",
                    "id": self._id("met"),
                    "status": "final",
                    "code": {"coding": [{"system": "urn:azaguard:lab", "code": code}], "text": text},
                    "subject": self._subject(),
                    "effectiveDateTime": str(when),
                    "valueQuantity": q,
                }
            )
        return self

    def status(self, loinc: str, answer_code: str, answer_display: str, when: str | date) -> BundleBuilder:
        return self.add(
            {
                "resourceType": "Observation",
                "id": self._id("status"),
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": loinc}]},
                "subject": self._subject(),
                "effectiveDateTime": str(when),
                "valueCodeableConcept": {"coding": [{"system": LOINC, "code": answer_code, "display": answer_display}]},
            }
        )

    def pregnant(self, when: str | date) -> BundleBuilder:
        return self.status("82810-3", "LA15173-0", "Pregnant", when)

    def breastfeeding(self, when: str | date) -> BundleBuilder:
        return self.status("63895-7", "LA33-6", "Yes", when)

    def symptom(self, snomed: str, display: str, when: str | date, present: bool = True) -> BundleBuilder:
        return self.add(
            {
                "resourceType": "Observation",
                "id": self._id("sym"),
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
                        ]
                    }
                ],
                "code": {"coding": [{"system": SNOMED, "code": snomed, "display": display}]},
                "subject": self._subject(),
                "effectiveDateTime": str(when),
                "valueBoolean": present,
            }
        )

    def screening(self, loinc: str, display: str, when: str | date, result: str = "Negative") -> BundleBuilder:
        return self.add(
            {
                "resourceType": "Observation",
                "id": self._id("scr"),
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
                "subject": self._subject(),
                "effectiveDateTime": str(when),
                "valueCodeableConcept": {"text": result},
            }
        )

    # ------------------------------------------------------------ medicines
    @staticmethod
    def _concept(name: str, rxnorm: str | None) -> Resource:
        cc: Resource = {"text": name}
        if rxnorm:
            cc["coding"] = [{"system": RXNORM, "code": rxnorm, "display": name}]
        return cc

    @staticmethod
    def _dosage(dose_mg: float | None, per_day: int) -> list[Resource]:
        if dose_mg is None:
            return []
        return [
            {
                "text": f"{dose_mg:g} mg {'once' if per_day == 1 else str(per_day) + ' times'} daily",
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}],
            }
        ]

    def statement(
        self,
        name: str,
        start: str | date | None,
        dose_mg: float | None = None,
        per_day: int = 1,
        rxnorm: str | None = None,
        status: str = "active",
        end: str | date | None = None,
    ) -> BundleBuilder:
        res: Resource = {
            "resourceType": "MedicationStatement",
            "id": self._id("ms"),
            "status": status,
            "medicationCodeableConcept": self._concept(name, rxnorm),
            "subject": self._subject(),
        }
        period: Resource = {}
        if start:
            period["start"] = str(start)
        if end:
            period["end"] = str(end)
        if period:
            res["effectivePeriod"] = period
        dosage = self._dosage(dose_mg, per_day)
        if dosage:
            res["dosage"] = dosage
        return self.add(res)

    def azathioprine(
        self, start: str | date, dose_mg: float, end: str | date | None = None, per_day: int = 1
    ) -> BundleBuilder:
        status = "completed" if end else "active"
        return self.statement("Azathioprine 50 mg tablet", start, dose_mg, per_day, "1256", status, end)

    def request(
        self,
        name: str,
        authored: str | date,
        dose_mg: float | None = None,
        per_day: int = 1,
        rxnorm: str | None = None,
        status: str = "draft",
    ) -> BundleBuilder:
        res: Resource = {
            "resourceType": "MedicationRequest",
            "id": self._id("mr"),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": self._concept(name, rxnorm),
            "subject": self._subject(),
            "authoredOn": str(authored),
        }
        dosage = self._dosage(dose_mg, per_day)
        if dosage:
            res["dosageInstruction"] = dosage
        return self.add(res)

    def vaccine_order(self, name: str, cvx: str, authored: str | date) -> BundleBuilder:
        return self.add(
            {
                "resourceType": "MedicationRequest",
                "id": self._id("mr"),
                "status": "draft",
                "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": CVX, "code": cvx, "display": name}], "text": name},
                "subject": self._subject(),
                "authoredOn": str(authored),
            }
        )

    def immunization(self, name: str, cvx: str, when: str | date) -> BundleBuilder:
        return self.add(
            {
                "resourceType": "Immunization",
                "id": self._id("imm"),
                "status": "completed",
                "vaccineCode": {"coding": [{"system": CVX, "code": cvx, "display": name}], "text": name},
                "patient": self._subject(),
                "occurrenceDateTime": str(when),
            }
        )

    # ------------------------------------------------------------ conditions, allergies
    def condition(
        self, snomed: str | None, text: str, onset: str | date | None = None, status: str = "active"
    ) -> BundleBuilder:
        cc: Resource = {"text": text}
        if snomed:
            cc["coding"] = [{"system": SNOMED, "code": snomed, "display": text}]
        res: Resource = {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]
            },
            "code": cc,
            "subject": self._subject(),
        }
        if onset:
            res["onsetDateTime"] = str(onset)
        return self.add(res)

    def allergy(self, name: str, rxnorm: str | None = None) -> BundleBuilder:
        return self.add(
            {
                "resourceType": "AllergyIntolerance",
                "id": self._id("alg"),
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": self._concept(name, rxnorm),
                "patient": self._subject(),
            }
        )
