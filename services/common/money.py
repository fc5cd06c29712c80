"""Money as people read it. The APIs count integer qəpik (100 to the manat); messages a
person reads also give the amount in manat."""


def manat(minor: int, *, grouped: bool = True, lang: str = "en") -> str:
    """Qəpik as manat: 123456 -> '1,234.56' to read ('1.234,56' in Azerbaijani, whose
    decimal mark is the comma), '1234.56' (grouped=False) for files that other programs
    read."""
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    if not grouped:
        return f"{sign}{whole}.{cents:02d}"
    if lang == "az":
        return f"{sign}{whole:,}".replace(",", ".") + f",{cents:02d}"
    return f"{sign}{whole:,}.{cents:02d}"


def qepik_and_manat(minor: int) -> str:
    """123456 -> '123456 qəpik (1,234.56 AZN)': the API's unit first, then the manat a
    cashier typed."""
    return f"{minor} qəpik ({manat(minor)} AZN)"
