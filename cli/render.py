"""Rich tables for what the services and the journeys answer, in English or Azerbaijani."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from datetime import UTC

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.catalogue import Catalogue
from cli.export import transaction_kind
from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.lending.v1 import lending_service_pb2 as lending_pb
from services.common.districts import known_districts
from services.common.money import manat
from services.common.programme_time import programme_date
from services.common.protoconv import from_proto_date
from workers.journey.model import AssistanceState, JourneyStatus

LABELS: dict[str, dict[str, str]] = {
    "assessment": {"en": "Eligibility assessment", "az": "Uyğunluq qiymətləndirməsi"},
    "programme": {"en": "Programme", "az": "Proqram"},
    "outcome": {"en": "Outcome", "az": "Qərar"},
    "rule": {"en": "Rule", "az": "Qayda"},
    "result": {"en": "Result", "az": "Nəticə"},
    "explanation": {"en": "Explanation", "az": "İzah"},
    "passed": {"en": "passed", "az": "keçdi"},
    "failed": {"en": "failed", "az": "keçmədi"},
    "missing": {"en": "missing data", "az": "çatışmayan məlumat"},
    "OUTCOME_ELIGIBLE": {"en": "eligible", "az": "uyğundur"},
    "OUTCOME_NOT_ELIGIBLE": {"en": "not eligible", "az": "uyğun deyil"},
    "OUTCOME_NEEDS_REVIEW": {"en": "needs review", "az": "yoxlanılmalıdır"},
    # A programme a changed rule set no longer decides (the what-if's "after").
    "OUTCOME_UNSPECIFIED": {"en": "not decided", "az": "qərar verilmir"},
    "priority": {"en": "Priority score", "az": "Prioritet balı"},
    "rule_set": {"en": "rule set", "az": "qaydalar toplusu"},
    "reassessed": {"en": "re-assessed", "az": "yenidən qiymətləndirilib"},
    "rule_set_unread": {
        "en": "programmes are shown by their ids: the rule set could not be read",
        "az": "proqramlar kodları ilə göstərilir: qaydalar toplusunu oxumaq mümkün olmadı",
    },
    # {rule_set} {version} {latest} {command}: an assessment under an older version.
    "older_rule_set": {
        "en": "assessed under {rule_set} v{version}; v{latest} is the latest — re-assess "
        "with `{command}` to use it",
        "az": "{rule_set} qaydalar toplusunun v{version} versiyası ilə qiymətləndirilib; ən "
        "son versiya v{latest} — ondan istifadə etmək üçün yenidən qiymətləndirin: "
        "`{command}`",
    },
    "reason_placeholder": {"en": "why", "az": "səbəb"},
    # Facts an assessment may lack (a rule's `needs`), shown as `coded("fact", ...)`: the
    # Washington Group domains (WashingtonGroupDomain without its prefix, lower-case).
    "fact:seeing": {"en": "Washington Group: seeing", "az": "Vaşinqton Qrupu: görmə"},
    "fact:hearing": {"en": "Washington Group: hearing", "az": "Vaşinqton Qrupu: eşitmə"},
    "fact:walking": {
        "en": "Washington Group: walking or climbing steps",
        "az": "Vaşinqton Qrupu: yerimə və ya pilləkənlə qalxma",
    },
    "fact:cognition": {
        "en": "Washington Group: remembering or concentrating",
        "az": "Vaşinqton Qrupu: yadda saxlama və ya diqqəti cəmləmə",
    },
    "fact:self_care": {
        "en": "Washington Group: self-care",
        "az": "Vaşinqton Qrupu: özünəqulluq",
    },
    "fact:communication": {
        "en": "Washington Group: communicating",
        "az": "Vaşinqton Qrupu: ünsiyyət",
    },
    "fact:max_difficulty": {
        "en": "Washington Group: any answer",
        "az": "Vaşinqton Qrupu: hər hansı cavab",
    },
    "journey": {"en": "Journey", "az": "Yol xəritəsi"},
    "stage": {"en": "Stage", "az": "Mərhələ"},
    "workflow": {"en": "Workflow", "az": "İş axını"},
    "earlier_journeys": {"en": "Earlier journeys", "az": "Əvvəlki yol xəritələri"},
    "eligible_programmes": {"en": "Eligible programmes", "az": "Uyğun proqramlar"},
    "loan": {"en": "Loan", "az": "Kredit"},
    "loan_status": {"en": "Loan status", "az": "Kreditin vəziyyəti"},
    "next_due": {"en": "Next instalment", "az": "Növbəti ödəniş"},
    "outstanding": {"en": "Outstanding (AZN)", "az": "Qalıq borc (AZN)"},
    "days_past_due": {"en": "Days past due", "az": "Gecikmə günləri"},
    "overdue": {"en": "Overdue", "az": "Vaxtı keçmiş borc"},
    "assistance": {"en": "Assistance", "az": "Yardım"},
    "follow_ups": {"en": "Follow-ups recorded", "az": "Qeydə alınmış izləmələr"},
    "follow_up_due": {"en": "Follow-up due", "az": "Gözlənilən izləmə"},
    "write_off_proposed": {
        "en": "Write-off proposed",
        "az": "Balansdan silinmə təklif edilib",
    },
    "waiting_for_funds": {
        "en": "Tranche waiting for the fund",
        "az": "Fonddan vəsait gözləyən hissə",
    },
    "assessment_id": {"en": "Assessment", "az": "Qiymətləndirmə"},
    "months": {"en": "months", "az": "ay"},
    "awaiting": {"en": "awaiting the answers", "az": "cavablar gözlənilir"},
    "none": {"en": "none", "az": "yoxdur"},
    "committed_capital": {"en": "Committed capital", "az": "Ayrılmış kapital"},
    "disbursed": {"en": "Disbursed", "az": "Verilmiş məbləğ"},
    "repaid_principal": {"en": "Repaid principal", "az": "Qaytarılmış əsas borc"},
    "written_off": {"en": "Written off", "az": "Balansdan silinmiş borc"},
    "recovered": {"en": "Recovered", "az": "Silindikdən sonra geri alınmış"},
    "outstanding_principal": {"en": "Outstanding principal", "az": "Qalıq əsas borc"},
    "available": {"en": "Available to lend", "az": "Kredit üçün mövcud vəsait"},
    "journey_figures": {
        "en": "Loan figures as the journey last read them",
        "az": "Kredit göstəriciləri yol xəritəsinin son oxuduğu kimi",
    },
    "journey_assistance": {
        "en": "Assistance as the journey last heard of it",
        "az": "Yardım yol xəritəsinin son bildiyi kimi",
    },
    "waitlist": {"en": "waitlist #", "az": "növbədə №"},
    "finished": {"en": "finished", "az": "başa çatıb"},
    # The journey's own word for an item the assistance service refused to request.
    "assistance_state:refused": {
        "en": "refused by the assistance service",
        "az": "yardım xidməti tərəfindən rədd edilib",
    },
    # ...and for one not requested because the assessment did not find the survivor
    # eligible for its programme.
    "assistance_state:not_eligible": {
        "en": "not requested: not eligible (assessment)",
        "az": "istənilməyib: uyğun deyil (qiymətləndirmə)",
    },
    "assistance_state:needs_review": {
        "en": "not requested: the assessment needs review",
        "az": "istənilməyib: qiymətləndirmə yoxlanılmalıdır",
    },
    "portfolio_as_of": {"en": "Portfolio as of {day}", "az": "Portfel, {day} tarixinə"},
    "total": {"en": "Total", "az": "Cəmi"},
    "by_district": {"en": "By district", "az": "Rayonlar üzrə"},
    "by_sex": {"en": "By sex", "az": "Cins üzrə"},
    "by_product": {"en": "By product", "az": "Məhsullar üzrə"},
    "active_loans": {"en": "Active loans", "az": "Aktiv kreditlər"},
    "outstanding_azn": {"en": "Outstanding (AZN)", "az": "Qalıq borc (AZN)"},
    "par30_azn": {"en": "PAR30 (AZN)", "az": "PAR30 (AZN)"},
    "par30": {"en": "PAR30", "az": "PAR30"},
    "repayment_rate": {"en": "Repayment rate", "az": "Qaytarılma dərəcəsi"},
    "delinquency_buckets": {"en": "Delinquency buckets", "az": "Gecikmə qrupları"},
    "bucket": {"en": "Bucket", "az": "Qrup"},
    "instalment_state:UPCOMING": {"en": "upcoming", "az": "gələcək"},
    "instalment_state:DUE": {"en": "due today", "az": "bu gün ödənilməli"},
    "instalment_state:PAID": {"en": "paid", "az": "ödənilib"},
    "instalment_state:PARTIALLY_PAID": {"en": "partly paid", "az": "qismən ödənilib"},
    "instalment_state:OVERDUE": {"en": "overdue", "az": "vaxtı keçib"},
    "instalment_state:WRITTEN_OFF": {"en": "written off", "az": "balansdan silinib"},
    "schedule": {"en": "Repayment schedule", "az": "Ödəniş cədvəli"},
    "revision": {"en": "revision", "az": "versiya"},
    "number": {"en": "#", "az": "№"},
    "due_date": {"en": "Due", "az": "Ödəniş tarixi"},
    "principal_due": {"en": "Due (AZN)", "az": "Ödənilməli (AZN)"},
    "principal_paid": {"en": "Paid (AZN)", "az": "Ödənilib (AZN)"},
    "instalment_state": {"en": "State", "az": "Vəziyyət"},
    "statement": {"en": "Statement of loan", "az": "Kredit üzrə çıxarış"},
    "rule_set_versions": {"en": "Versions of rule set", "az": "Qaydalar toplusunun versiyaları"},
    "version": {"en": "Version", "az": "Versiya"},
    "published": {"en": "Published (UTC)", "az": "Dərc edilib (UTC)"},
    "published_by": {"en": "By", "az": "Dərc edən"},
    "change_note": {"en": "Why", "az": "Səbəb"},
    # {n}: how many stored assessments the what-if decided again.
    "what_if": {
        "en": "What if: {n} stored assessment(s) decided again under the changed rules",
        "az": "Nə olardı: {n} saxlanmış qiymətləndirmə dəyişdirilmiş qaydalarla yenidən "
        "qərarlaşdırılıb",
    },
    "would_change": {"en": "Would change", "az": "Dəyişərdi"},
    "examples": {"en": "Examples (before → after)", "az": "Nümunələr (əvvəl → sonra)"},
    "no_change": {"en": "no decision would change", "az": "heç bir qərar dəyişməzdi"},
    "date_and_id": {"en": "Date, transaction id", "az": "Tarix, əməliyyatın kodu"},
    "transaction": {"en": "Transaction", "az": "Əməliyyat"},
    "amount_azn": {"en": "Amount (AZN)", "az": "Məbləğ (AZN)"},
    "outstanding_after": {"en": "Outstanding (AZN)", "az": "Qalıq (AZN)"},
    "recorded_by": {"en": "by", "az": "qeyd edən:"},
    # {id}: a reversal's transaction id, and the one a reversal cancels.
    "reversed_by": {"en": "reversed by {id}", "az": "{id} ilə ləğv edilib"},
    "reverses": {"en": "cancels {id}", "az": "{id} əməliyyatını ləğv edir"},
    "transaction_kind:DISBURSEMENT": {"en": "tranche paid out", "az": "tranş verilib"},
    "transaction_kind:REPAYMENT": {"en": "repayment", "az": "ödəniş"},
    "transaction_kind:REPAYMENT_REVERSAL": {
        "en": "repayment reversed",
        "az": "ödəniş ləğv edilib",
    },
    "transaction_kind:WRITE_OFF": {"en": "written off", "az": "balansdan silinib"},
    "transaction_kind:RECOVERY": {
        "en": "recovery after write-off",
        "az": "silinmiş borcun ödənişi",
    },
    "transaction_kind:RECOVERY_REVERSAL": {
        "en": "recovery reversed",
        "az": "silinmiş borcun ödənişi ləğv edilib",
    },
    "principal": {"en": "Principal", "az": "Əsas borc"},
    "product": {"en": "Product", "az": "Məhsul"},
    "borrower": {"en": "Borrower", "az": "Borcalan"},
    "closed_on": {"en": "Closed on", "az": "Bağlanma tarixi"},
    "as_of": {"en": "as of", "az": "tarixinə"},
    "bucket:current": {"en": "current", "az": "vaxtında"},
    "bucket:1-30": {"en": "1-30 days", "az": "1-30 gün"},
    "bucket:31-60": {"en": "31-60 days", "az": "31-60 gün"},
    "bucket:61-90": {"en": "61-90 days", "az": "61-90 gün"},
    "bucket:over-90": {"en": "over 90 days", "az": "90 gündən çox"},
    "loans": {"en": "Loans", "az": "Kreditlər"},
    "sex:female": {"en": "female", "az": "qadın"},
    "sex:male": {"en": "male", "az": "kişi"},
    "needs": {"en": "Needs", "az": "Ehtiyaclar"},
    "need": {"en": "Need", "az": "Ehtiyac"},
    "survivor": {"en": "Survivor", "az": "Sağ qalan"},
    "type": {"en": "Type", "az": "Növ"},
    "district": {"en": "District", "az": "Rayon"},
    "need_state": {"en": "State", "az": "Vəziyyət"},
    "recorded": {"en": "Recorded", "az": "Qeydə alınıb"},
    # Journey lists (journeys, arrears).
    "journeys": {"en": "Journeys", "az": "Yol xəritələri"},
    "running_journeys": {"en": "Running journeys", "az": "Davam edən yol xəritələri"},
    "in_arrears": {
        "en": "Journeys at least {days} day(s) past due",
        "az": "Ən azı {days} gün gecikmiş yol xəritələri",
    },
    "programme_year": {"en": "Year", "az": "İl"},
    "started_utc": {"en": "Started (UTC)", "az": "Başlayıb (UTC)"},
    "limit_reached": {"en": "limit reached", "az": "hədd çatıb"},
    # Codes shown as `coded(kind, code, lang)`: the label, then the code a command takes.
    # A need's states (the assistance service's NeedState, as `needs --state` takes them).
    "need_state:open": {"en": "Open", "az": "Açıq"},
    "need_state:planned": {"en": "Assistance requested", "az": "Yardım istənilib"},
    "need_state:referred": {"en": "Referred to a provider", "az": "Təchizatçıya göndərilib"},
    "need_state:met": {"en": "Met", "az": "Ödənilib"},
    "need_state:closed_unmet": {"en": "Closed, not met", "az": "Bağlanıb, ödənilməyib"},
    # The journey's stages (workers.journey.model.Stage).
    "stage:INTAKE": {"en": "Intake", "az": "Qəbul"},
    "stage:ELIGIBILITY": {"en": "Eligibility assessment", "az": "Uyğunluğun qiymətləndirilməsi"},
    "stage:ASSISTANCE_PLAN": {"en": "Assistance plan", "az": "Yardım planı"},
    "stage:LOAN_APPLICATION": {"en": "Loan application", "az": "Kredit müraciəti"},
    "stage:COMMITTEE_REVIEW": {
        "en": "Credit committee review",
        "az": "Kredit komitəsinin baxışı",
    },
    "stage:DISBURSEMENT": {"en": "Disbursement", "az": "Kreditin verilməsi"},
    "stage:GRACE": {"en": "Grace period", "az": "Güzəşt müddəti"},
    "stage:REPAYMENT": {"en": "Repayment", "az": "Kreditin qaytarılması"},
    "stage:ARREARS_REVIEW": {
        "en": "Arrears review",
        "az": "Gecikmiş borcun araşdırılması",
    },
    "stage:REPAID": {"en": "Loan repaid", "az": "Kredit qaytarılıb"},
    "stage:FOLLOW_UP": {"en": "Impact follow-up", "az": "Nəticələrin izlənməsi"},
    "stage:ASSISTANCE_ONLY": {"en": "Assistance only, no loan", "az": "Yalnız yardım, kreditsiz"},
    "stage:COMPLETED": {"en": "Completed", "az": "Başa çatıb"},
    "stage:CLOSED_NOT_ELIGIBLE": {
        "en": "Closed: not eligible",
        "az": "Bağlanıb: uyğun deyil",
    },
    "stage:CLOSED_REJECTED": {
        "en": "Closed: loan rejected",
        "az": "Bağlanıb: kredit rədd edilib",
    },
    "stage:CLOSED_WITHDRAWN": {
        "en": "Closed: application withdrawn",
        "az": "Bağlanıb: müraciət geri götürülüb",
    },
    "stage:WRITTEN_OFF": {"en": "Loan written off", "az": "Kredit balansdan silinib"},
    # The loan's states (lending's LoanState without its prefix).
    "loan_state:SUBMITTED": {
        "en": "Submitted, awaiting the committee",
        "az": "Təqdim edilib, komitənin qərarı gözlənilir",
    },
    "loan_state:APPROVED": {"en": "Approved", "az": "Təsdiq edilib"},
    "loan_state:REJECTED": {"en": "Rejected", "az": "Rədd edilib"},
    "loan_state:WITHDRAWN": {"en": "Withdrawn", "az": "Geri götürülüb"},
    "loan_state:ACTIVE": {"en": "Active", "az": "Aktiv"},
    "loan_state:CLOSED_OBLIGATIONS_MET": {
        "en": "Closed: repaid in full",
        "az": "Bağlanıb: tam qaytarılıb",
    },
    "loan_state:CLOSED_WRITTEN_OFF": {
        "en": "Closed: written off",
        "az": "Bağlanıb: balansdan silinib",
    },
    # The journey's workflow, as Temporal reports it.
    "workflow_state:RUNNING": {"en": "running", "az": "davam edir"},
    "workflow_state:COMPLETED": {"en": "completed", "az": "başa çatıb"},
    "workflow_state:FAILED": {"en": "failed", "az": "xəta ilə dayanıb"},
    "workflow_state:CANCELED": {"en": "cancelled", "az": "ləğv edilib"},
    "workflow_state:TERMINATED": {"en": "terminated", "az": "dayandırılıb"},
    "workflow_state:CONTINUED_AS_NEW": {
        "en": "continued as new",
        "az": "yeni icra kimi davam edir",
    },
    "workflow_state:TIMED_OUT": {"en": "timed out", "az": "vaxtı bitib"},
}


def label(key: str, lang: str) -> str:
    return LABELS.get(key, {}).get(lang, key)


def coded(kind: str, code: str, lang: str) -> str:
    """A code (a stage, a loan state) as a reader sees it: its label in `lang`, then the
    code itself, which commands take (`journeys --stage GRACE`): "Güzəşt müddəti (GRACE)".
    A code without a label is shown as it is."""
    key = f"{kind}:{code}"
    return f"{LABELS[key][lang]} ({code})" if key in LABELS else code


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader stopped reading (`mineaction loan L | head -1`): nothing is wrong, as
        cli/errors.py says of it, so no exit code 1 (Rich's own) for scripts to trip on."""
        with contextlib.suppress(SystemExit):
            super().on_broken_pipe()
        raise SystemExit(0)


def console() -> Console:
    # Wide enough for the tables when the output is a pipe or a file.
    return _Console(soft_wrap=False, width=None if Console().is_terminal else 160)


def line(text: str) -> None:
    """One line of plain output: never wrapped (it is grepped), never read as markup."""
    console().print(text, markup=False, soft_wrap=True, highlight=False)


def programme_name(programme_id: str, lang: str, rule_set: eligibility_pb.RuleSet | None) -> str:
    """A programme as the rule set names it in `lang`, with its id: "Əlil arabası
    (wheelchair)"; its id alone when the rule set is not at hand or does not name it."""
    for p in rule_set.programmes if rule_set is not None else ():
        if p.programme_id == programme_id:
            name = p.name.az if lang == "az" else p.name.en
            return f"{name} ({programme_id})" if name else programme_id
    return programme_id


def assessments_on_record(
    survivor_id: str, count: int, shown: eligibility_pb.Assessment, lang: str
) -> str:
    """Which of the survivor's stored assessments is shown."""
    day = from_proto_date(shown.assessment_date).isoformat()
    if lang == "az":
        return (
            f"{survivor_id}: qeydə alınmış qiymətləndirmə sayı: {count}; göstərilən: "
            f"{shown.assessment_id} ({day})"
        )
    return f"{survivor_id}: {count} assessment(s) on record; shown: {shown.assessment_id} ({day})"


def assessment_table(
    a: eligibility_pb.Assessment, lang: str, rule_set: eligibility_pb.RuleSet | None = None
) -> Table:
    """Each programme's outcome and every rule's result, in `lang`; programmes named as
    `rule_set` (the version that decided) names them."""
    title = (
        f"{label('assessment', lang)} {a.assessment_id} — {a.survivor_id}, "
        f"{from_proto_date(a.assessment_date).isoformat()}, "
        f"{label('rule_set', lang)} {a.rule_set_id} v{a.rule_set_version}"
    )
    if a.reassessment_reason:
        title += f" ({label('reassessed', lang)}: {a.reassessment_reason})"
    table = Table(title=escape(title), show_lines=True)
    table.add_column(label("programme", lang), style="bold")
    table.add_column(label("outcome", lang))
    table.add_column(label("rule", lang))
    table.add_column(label("result", lang))
    table.add_column(label("explanation", lang), overflow="fold")
    for d in a.decisions:
        outcome_key = eligibility_pb.Outcome.Name(d.outcome)
        style = {"OUTCOME_ELIGIBLE": "green", "OUTCOME_NOT_ELIGIBLE": "red"}.get(
            outcome_key, "yellow"
        )
        outcome = f"[{style}]{label(outcome_key, lang)}[/{style}]"
        programme = escape(programme_name(d.programme_id, lang, rule_set))
        first = True
        for r in d.rule_results:
            text = r.explanation.az if lang == "az" else r.explanation.en
            table.add_row(
                programme if first else "",
                outcome if first else "",
                r.rule_id,
                label("passed" if r.passed else "failed", lang),
                escape(text or r.explanation.en),
            )
            first = False
        if d.missing_data:
            table.add_row(
                programme if first else "",
                outcome if first else "",
                "",
                label("missing", lang),
                escape(", ".join(coded("fact", fact, lang) for fact in d.missing_data)),
            )
            first = False
        if first:
            table.add_row(programme, outcome, "", "", "")
    return table


def priority_lines(a: eligibility_pb.Assessment, lang: str) -> list[str]:
    """The score, then each part that gave points, named as the rule set explains it in
    `lang`: "  +15  Himayədə olanlar (hər biri 5 bal, ən çoxu 30)."."""
    lines = [f"{label('priority', lang)}: {a.priority.total}"]
    for c in a.priority.components:
        if c.points:
            text = (c.explanation.az if lang == "az" else c.explanation.en) or c.explanation.en
            lines.append(f"  {c.points:+d}  {text or c.name}")
    return lines


def older_rule_set(a: eligibility_pb.Assessment, latest: int, lang: str) -> str:
    """Says that `a` was decided under an older version than the latest, and how to
    re-assess under the latest."""
    command = (
        f"mineaction assess {a.survivor_id} --reassess-under-latest --reason "
        f'"{label("reason_placeholder", lang)}"'
    )
    return label("older_rule_set", lang).format(
        rule_set=a.rule_set_id, version=a.rule_set_version, latest=latest, command=command
    )


def named(names: dict[str, dict[str, str]], code: str, lang: str) -> str:
    """A code as people read it with the code after it: "Saatlı (saatli)"."""
    name = names.get(code, {}).get(lang)
    return f"{name} ({code})" if name else code


def registered(survivor: eligibility_pb.Survivor, district_code: str, lang: str) -> str:
    """The survivor registered, their district, and, once assessed, the rule-set version
    their assessments use until a re-assessment under the latest."""
    district = named(known_districts(), district_code, lang)
    rule_set, version = survivor.pinned_rule_set_id, survivor.pinned_rule_set_version
    if lang == "az":
        pinned = f"; {rule_set} qaydalar toplusunun v{version} versiyasına bağlıdır"
        line = f"sağ qalan {survivor.survivor_id} qeydiyyata alındı, {district}"
    else:
        pinned = f"; pinned to rule set {rule_set} v{version}"
        line = f"registered survivor {survivor.survivor_id}, {district}"
    return line + (pinned if version else "")


def consent_withdrawn(survivor: eligibility_pb.Survivor, lang: str) -> str:
    """A survivor's standing withdrawal of consent, and what it means."""
    withdrawal = survivor.consent_withdrawal
    on = from_proto_date(withdrawal.withdrawn_on).isoformat()
    if lang == "az":
        return (
            f"sağ qalan {survivor.survivor_id} {on} tarixində məlumatlarının emalına "
            f"razılığını geri götürüb (qeyd edən: {withdrawal.recorded_by}): məlumatları "
            "daha istifadə olunmur"
        )
    return (
        f"survivor {survivor.survivor_id} withdrew consent to data processing on {on} "
        f"(recorded by {withdrawal.recorded_by}): their data is no longer used"
    )


def assistance_state(a: AssistanceState, lang: str = "en", known: Catalogue | None = None) -> str:
    """One item: its state, where it waits, its assistance id; '…' until it is known. The
    state is named in `lang` as the assistance catalogue names it, when it is at hand."""
    state = (
        (known.state_name(a.type_id, a.state, lang) if known and a.state else None)
        or LABELS.get(f"assistance_state:{a.state}", {}).get(lang)
        or a.state
        or "…"
    )
    if a.refusal:  # the service's reason code, the same in either language
        state += f": {a.refusal}"
    if a.waitlist_position:
        state += f" ({label('waitlist', lang)}{a.waitlist_position})"
    if a.terminal:
        state += f" ({label('finished', lang)})"
    return state + (f" [{a.assistance_id}]" if a.assistance_id else "")


def assistance_item(a: AssistanceState, lang: str, known: Catalogue | None) -> str:
    """An item of the journey: its type named in `lang` with the type id that `journey
    assist` takes ("Əlil arabası (wheelchair)"), then its state."""
    name = known.type_name(a.type_id, lang) if known else None
    kind = f"{name} ({a.type_id})" if name else a.type_id
    return f"{kind}: {assistance_state(a, lang, known)}"


def needs_table(needs: Sequence[assistance_pb.Need], known: Catalogue, lang: str) -> Table:
    """Needs as staff read them: the type by its name in `lang`, the state, the assistance
    requested for each."""
    table = Table(title=f"{label('needs', lang)} — {len(needs)}")
    for column in ("need", "survivor", "type", "district", "need_state", "assistance", "recorded"):
        # Folded, never cut: a cut id ("need-9e…") names no need, and four survivors read
        # alike.
        table.add_column(label(column, lang), overflow="fold")
    for need in needs:
        type_name = known.type_name(need.type_id, lang)
        table.add_row(
            need.need_id,
            need.survivor_id,
            f"{type_name} ({need.type_id})" if type_name else need.type_id,
            named(known_districts(), need.district_code, lang),
            coded("need_state", assistance_pb.NeedState.Name(need.state)[11:].lower(), lang),
            ", ".join(need.assistance_ids) or label("none", lang),
            programme_date(need.create_time.ToDatetime(tzinfo=UTC)).isoformat(),
        )
    return table


def journey_table(
    status: JourneyStatus,
    workflow_id: str,
    state: str,
    lang: str,
    known: Catalogue | None = None,
    earlier: list[tuple[str, str, str]] | None = None,
    rule_set: eligibility_pb.RuleSet | None = None,
) -> Table:
    """Everything the journey's status query answers; stages and states named in `lang`
    (the assistance items' from the catalogue `known`, the eligible programmes from the
    deciding `rule_set`, when they could be read); then the survivor's `earlier` journeys
    (workflow id, workflow state, last stage), how each ended."""
    table = Table(title=f"{label('journey', lang)} {status.survivor_id}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    none = label("none", lang)
    assessment = (
        f"{status.assessment_id} ({label('rule_set', lang)} v{status.rule_set_version})"
        if status.assessment_id
        else none
    )
    rows = [
        (label("workflow", lang), f"{workflow_id}: {coded('workflow_state', state, lang)}"),
        (label("stage", lang), coded("stage", status.stage, lang)),
        (label("assessment_id", lang), assessment),
        (
            label("eligible_programmes", lang),
            ", ".join(programme_name(p, lang, rule_set) for p in status.eligible_programmes)
            or none,
        ),
        (label("loan", lang), status.loan_id or none),
        (
            label("loan_status", lang),
            coded("loan_state", status.loan_status, lang)
            + (f", {status.closed_on}" if status.closed_on else "")
            if status.loan_status
            else none,
        ),
        (
            label("next_due", lang),
            f"{status.next_due_date}: {manat(status.next_due_minor, lang=lang)} AZN"
            if status.next_due_date and not status.loan_status.startswith("CLOSED")
            else none,
        ),
        *(
            [(label("overdue", lang), f"{manat(status.overdue_minor, lang=lang)} AZN")]
            if status.overdue_minor
            else []
        ),
        (
            label("outstanding", lang),
            manat(status.outstanding_minor, lang=lang) if status.loan_id else none,
        ),
        (label("days_past_due", lang), str(status.days_past_due)),
    ]
    if not status.assistance:
        rows.append((label("assistance", lang), none))
    for i, a in enumerate(status.assistance):
        rows.append((label("assistance", lang) if i == 0 else "", assistance_item(a, lang, known)))
    rows.append(
        (
            label("follow_ups", lang),
            ", ".join(f"+{m} {label('months', lang)}" for m in status.follow_ups_recorded) or none,
        )
    )
    if status.waiting_for_funds_minor:
        rows.append(
            (
                label("waiting_for_funds", lang),
                f"{manat(status.waiting_for_funds_minor, lang=lang)} AZN",
            )
        )
    if status.write_off_proposed_by:
        rows.append(
            (
                label("write_off_proposed", lang),
                f"{status.write_off_proposed_by}: {status.write_off_reason}",
            )
        )
    if status.follow_up_due:
        rows.append(
            (
                label("follow_up_due", lang),
                f"+{status.follow_up_due} {label('months', lang)}: {label('awaiting', lang)}",
            )
        )
    for i, (workflow, state, stage) in enumerate(earlier or []):
        ended = coded("workflow_state", state, lang)
        if stage:
            ended += f", {coded('stage', stage, lang)}"
        rows.append((label("earlier_journeys", lang) if i == 0 else "", f"{workflow}: {ended}"))
    for key, value in rows:
        table.add_row(key, escape(value))  # ids in [brackets] are not Rich markup
    return table


def fund_table(f: lending_pb.Fund, lang: str) -> Table:
    name = f.name.az if lang == "az" else f.name.en
    table = Table(title=f"{name} ({f.fund_id})", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in (
        ("committed_capital", f.committed_capital_minor),
        ("disbursed", f.disbursed_minor),
        ("repaid_principal", f.repaid_principal_minor),
        ("written_off", f.written_off_minor),
        ("recovered", f.recovered_minor),
        ("outstanding_principal", f.outstanding_principal_minor),
        ("available", f.available_minor),
    ):
        table.add_row(f"{label(key, lang)} (AZN)", manat(value, lang=lang))
    return table


def percent(basis_points: int, lang: str = "en") -> str:
    """Basis points as a percentage, with the language's decimal mark (12,34% in az)."""
    whole, hundredths = divmod(basis_points, 100)
    return f"{whole}{',' if lang == 'az' else '.'}{hundredths:02d}%"


def portfolio_table(
    title: str, rows: list[tuple[str, lending_pb.PortfolioFigures]], lang: str = "en"
) -> Table:
    table = Table(title=title)
    table.add_column("", overflow="fold")  # a product's code is never cut
    for column in ("active_loans", "outstanding_azn", "par30_azn", "par30", "repayment_rate"):
        table.add_column(label(column, lang), justify="right")
    for key, f in rows:
        table.add_row(
            key,
            str(f.active_loans),
            manat(f.outstanding_principal_minor, lang=lang),
            manat(f.par30_outstanding_minor, lang=lang),
            percent(f.par30_basis_points, lang),
            percent(f.repayment_rate_basis_points, lang),
        )
    return table


def bucket_label(bucket: lending_pb.DelinquencyBucket.ValueType, lang: str) -> str:
    """A delinquency bucket as read: "31-60 gün" for DELINQUENCY_BUCKET_31_60 in az."""
    name = lending_pb.DelinquencyBucket.Name(bucket).removeprefix("DELINQUENCY_BUCKET_")
    code = name.replace("_", "-").lower()  # current, 1-30, ..., over-90
    return LABELS.get(f"bucket:{code}", {}).get(lang, code)


def loan_table(loan: lending_pb.Loan, as_of: str, lang: str) -> Table:
    """A loan's figures as of a day: state, amounts, arrears."""
    table = Table(
        title=f"{label('loan', lang)} {loan.loan_id} — {label('as_of', lang)} {as_of}",
        show_header=False,
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    state = lending_pb.LoanState.Name(loan.state).removeprefix("LOAN_STATE_")
    rows = [
        (label("loan_status", lang), coded("loan_state", state, lang)),
        (label("borrower", lang), loan.survivor_id),
        (label("product", lang), loan.product_id),
        (f"{label('principal', lang)} (AZN)", manat(loan.principal_minor, lang=lang)),
        (f"{label('disbursed', lang)} (AZN)", manat(loan.disbursed_minor, lang=lang)),
        (f"{label('repaid_principal', lang)} (AZN)", manat(loan.repaid_principal_minor, lang=lang)),
        (label("outstanding", lang), manat(loan.outstanding_principal_minor, lang=lang)),
        (label("days_past_due", lang), str(loan.days_past_due)),
    ]
    if loan.bucket:
        rows.append((label("bucket", lang), bucket_label(loan.bucket, lang)))
    if loan.written_off_minor:
        rows.append(
            (f"{label('written_off', lang)} (AZN)", manat(loan.written_off_minor, lang=lang))
        )
        rows.append((f"{label('recovered', lang)} (AZN)", manat(loan.recovered_minor, lang=lang)))
    if loan.HasField("close_date"):
        rows.append((label("closed_on", lang), from_proto_date(loan.close_date).isoformat()))
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


# Why lending made a schedule revision, in its own words (services/lending/service.py),
# and the same in Azerbaijani; what staff wrote after them stays as they wrote it.
_REVISION_REASONS_AZ = (
    (re.compile(r"^initial$"), "ilkin"),
    (re.compile(r"^tranche (\d+) disbursed$"), r"tranş №\1 verildi"),
    (re.compile(r"^rescheduled: "), "yenidən planlaşdırıldı: "),
    (
        re.compile(r"^revision (\d+) owing (.+?) again: repayment (\S+) reversed: "),
        r"versiya \1, \2 yenidən ödənilməlidir: \3 ödənişi geri qaytarıldı: ",
    ),
)


def revision_reason(reason: str, lang: str) -> str:
    """A schedule revision's reason in `lang`: lending's own words translated."""
    if lang != "az":
        return reason
    for pattern, said in _REVISION_REASONS_AZ:
        if pattern.search(reason):
            return pattern.sub(said, reason, count=1)
    return reason


def schedule_table(schedule: lending_pb.RepaymentSchedule, lang: str) -> Table:
    """Each instalment: when it is due, how much, what is paid, its state."""
    table = Table(
        title=f"{label('schedule', lang)}, {label('revision', lang)} {schedule.revision} "
        f"({escape(revision_reason(schedule.reason, lang))})"
    )
    for column in ("number", "due_date", "principal_due", "principal_paid"):
        table.add_column(label(column, lang), justify="right")
    table.add_column(label("instalment_state", lang))
    table.add_column(label("days_past_due", lang), justify="right")
    for i in schedule.instalments:
        state = lending_pb.InstalmentState.Name(i.state).removeprefix("INSTALMENT_STATE_")
        table.add_row(
            str(i.number),
            from_proto_date(i.due_date).isoformat(),
            manat(i.principal_due_minor, lang=lang),
            manat(i.principal_paid_minor, lang=lang),
            coded("instalment_state", state, lang),
            str(i.days_past_due) if i.days_past_due else "",
        )
    return table


def rule_set_versions_table(
    rule_set_id: str, versions: Sequence[eligibility_pb.RuleSet], lang: str
) -> Table:
    table = Table(title=f"{label('rule_set_versions', lang)} {rule_set_id}")
    table.add_column(label("version", lang), justify="right")
    table.add_column(label("published", lang), no_wrap=True)
    table.add_column(label("published_by", lang))
    table.add_column(label("change_note", lang), overflow="fold")
    for v in versions:
        published = v.publish_time.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(str(v.version), published, escape(v.published_by), escape(v.change_note))
    return table


def what_if_table(report: eligibility_pb.SimulateRuleSetResponse, lang: str) -> Table:
    """Per programme, how many stored decisions the changed rules would change, with
    example assessments and their outcome before and after."""
    table = Table(title=label("what_if", lang).format(n=report.assessments_evaluated))
    table.add_column(label("programme", lang))
    table.add_column(label("would_change", lang), justify="right")
    table.add_column(label("examples", lang), overflow="fold")
    for change in report.changes:
        examples = [
            f"{e.assessment_id}: {label(eligibility_pb.Outcome.Name(e.before), lang)} → "
            f"{label(eligibility_pb.Outcome.Name(e.after), lang)}"
            for e in change.examples
        ]
        table.add_row(change.programme_id, str(change.changed_count), "\n".join(examples))
    if not report.changes:
        table.add_row(label("no_change", lang), "0", "")
    return table


def transactions_table(
    loan_id: str, transactions: Sequence[lending_pb.LoanTransaction], lang: str
) -> Table:
    """A loan's statement: each ledger transaction by value date with its id (what
    `reverse` takes) under the date, what it was, who recorded it and its note, its
    amount and the principal outstanding after it. Four columns, so that dates, amounts
    and ids stay whole on an 80-column terminal; the middle column wraps."""
    table = Table(title=f"{label('statement', lang)} {loan_id}")
    table.add_column(label("date_and_id", lang), no_wrap=True)
    table.add_column(label("transaction", lang), overflow="fold")
    table.add_column(label("amount_azn", lang), justify="right", no_wrap=True)
    table.add_column(label("outstanding_after", lang), justify="right", no_wrap=True)
    for t in transactions:
        what = [
            label(f"transaction_kind:{transaction_kind(t)}", lang)
            + f", {label('recorded_by', lang)} {t.recorded_by}"
        ]
        what += [t.memo] if t.memo else []
        if t.reverses_transaction_id:
            what.append(label("reverses", lang).format(id=t.reverses_transaction_id))
        if t.reversed_by_transaction_id:
            what.append(label("reversed_by", lang).format(id=t.reversed_by_transaction_id))
        table.add_row(
            f"{from_proto_date(t.value_date).isoformat()}\n{t.transaction_id}",
            escape("\n".join(what)),
            manat(t.amount_minor, lang=lang),
            manat(t.outstanding_after_minor, lang=lang),
        )
    return table


def buckets_table(f: lending_pb.PortfolioFigures, lang: str = "en") -> Table:
    table = Table(title=label("delinquency_buckets", lang))
    table.add_column(label("bucket", lang))
    table.add_column(label("loans", lang), justify="right")
    table.add_column(label("outstanding_azn", lang), justify="right")
    for b in f.buckets:
        table.add_row(
            bucket_label(b.bucket, lang),
            str(b.loans),
            manat(b.outstanding_principal_minor, lang=lang),
        )
    return table
