"""The programme's own assistance types."""

from services.assistance.catalogue import AssistanceTypePlugin

WHEELCHAIR = AssistanceTypePlugin("wheelchair", "Wheelchair", "Əlil arabası", "stock")
SPA_REHABILITATION = AssistanceTypePlugin(
    "spa_rehabilitation",
    "Spa rehabilitation treatment",
    "Sanatoriya-kurort müalicəsi",
    "session_slots",
)
ENGLISH_COURSE = AssistanceTypePlugin(
    "english_course", "English course", "İngilis dili kursu", "seats"
)
COMPUTER_COURSE = AssistanceTypePlugin(
    "computer_course", "Computer course", "Kompüter kursu", "seats"
)
CARPET_WEAVING = AssistanceTypePlugin(
    "carpet_weaving", "Carpet-weaving enterprise support", "Xalçaçılıq müəssisəsinə dəstək", "none"
)
