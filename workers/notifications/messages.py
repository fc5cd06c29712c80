"""Message texts in Azerbaijani and English; amounts and dates formatted for the
reader's locale with Babel (CLDR data)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from babel.dates import format_date
from babel.numbers import format_currency

LOCALES = {"az": "az_AZ", "en": "en_GB"}

TEMPLATES: dict[str, dict[str, str]] = {
    "repayment_reminder": {
        "az": "Hörmətli borcalan, {amount} məbləğində növbəti ödənişin vaxtı {due_date} tarixidir.",
        "en": "Dear borrower, your next repayment of {amount} is due on {due_date}.",
    },
    "repayment_reminder_in_arrears": {
        "az": "Hörmətli borcalan, {overdue} məbləğində ödənişin vaxtı keçib; {amount} məbləğində "
        "növbəti ödənişin vaxtı {due_date} tarixidir.",
        "en": "Dear borrower, {overdue} of your repayments is overdue; your next repayment of "
        "{amount} is due on {due_date}.",
    },
    "committee_reminder": {
        "az": "{loan_id} kredit müraciəti {days} gündür kredit komitəsinin qərarını gözləyir.",
        "en": "Loan application {loan_id} has awaited the credit committee for {days} days.",
    },
    "committee_escalation": {
        "az": "{loan_id} kredit müraciəti üzrə qərar müddəti keçib: proqram menecerinə ötürülür.",
        "en": "The decision deadline for loan application {loan_id} has passed: escalated.",
    },
    "field_visit": {
        "az": "{loan_id} krediti {days_past_due} gün gecikib: borcalana səfər təşkil edin.",
        "en": "Loan {loan_id} is {days_past_due} days past due: please visit the borrower.",
    },
    "arrears_committee_review": {
        "az": "{loan_id} krediti {days_past_due} gün gecikib: kredit komitəsinin baxışı lazımdır.",
        "en": "Loan {loan_id} is {days_past_due} days past due: credit committee review needed.",
    },
    "disbursement_waiting_for_funds": {
        "az": "{loan_id} krediti üzrə {amount} məbləğində hissə fondda vəsait çatışmadığı üçün "
        "verilə bilmir; vəsait daxil olana qədər hər gün yenidən cəhd ediləcək.",
        "en": "Tranche {sequence} of loan {loan_id} ({amount}) cannot be paid out: the fund's "
        "available balance is too small. It is tried again each day until the fund covers it.",
    },
    "tranche_lapsed": {
        "az": "{loan_id} krediti üzrə {sequence} nömrəli hissə ({amount}) və ondan sonrakılar "
        "ödənişlər başlamazdan əvvəl verilmədi; kredit verilmiş məbləğlə davam edir.",
        "en": "Tranche {sequence} of loan {loan_id} ({amount}) and any after it were not paid "
        "out before repayments began; the loan goes on with what was disbursed.",
    },
    "follow_up_due": {
        "az": "Sağ qalan {survivor_id} ilə {months} aylıq təsir görüşünün vaxtıdır.",
        "en": "The {months}-month impact follow-up with survivor {survivor_id} is due.",
    },
}


def render(kind: str, language: str, params: dict[str, Any]) -> str:
    """The message text. Keys ending in _minor are qəpik amounts, keys ending in _date ISO
    dates; both are formatted for the reader's locale."""
    locale = LOCALES.get(language, LOCALES["az"])
    values: dict[str, str] = {}
    for key, value in params.items():
        if key.endswith("_minor"):
            amount = format_currency(Decimal(int(value)) / 100, "AZN", locale=locale)
            values[key.removesuffix("_minor")] = amount
        elif key.endswith("_date") and value:
            values[key] = format_date(date.fromisoformat(str(value)), "long", locale=locale)
        else:
            values[key] = str(value)
    template = TEMPLATES[kind].get(language) or TEMPLATES[kind]["az"]
    return template.format_map(values)
