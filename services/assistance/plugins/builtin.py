"""The programme's own assistance types, each one self-contained plugin.

They use nothing the core does not offer every plugin: a new type written outside this
repository (see docs/adding-an-assistance-type.md) has exactly the same powers.
"""

from services.assistance.catalogue import (
    AssistanceTypePlugin,
    State,
    Transition,
    attendance_transition,
)

_TEXT = {"type": "string", "minLength": 1, "maxLength": 200}

FOLLOW_UP = Transition(
    "follow_up",
    ("delivered",),
    "followed_up",
    {
        "type": "object",
        "properties": {"notes": {"type": "string", "maxLength": 1000}},
        "additionalProperties": False,
    },
    meets_need=True,
)

WHEELCHAIR = AssistanceTypePlugin(
    type_id="wheelchair",
    provider_kinds=("SUPPLIER", "CLINIC"),
    name_en="Wheelchair",
    name_az="Əlil arabası",
    capacity_model="stock",
    data_schema={
        "type": "object",
        "properties": {
            "seat_width_cm": {"type": "integer", "minimum": 30, "maximum": 60},
            "kind": {"enum": ["manual", "active", "electric"]},
        },
        "required": ["seat_width_cm"],
        "additionalProperties": False,
    },
    states=(
        State("fitting_assessment", "Fitting assessment", "Uyğunluq qiymətləndirməsi"),
        State("procurement", "Procurement", "Satınalma"),
        State("allocated", "Allocated", "Ayrıldı"),
        State("delivered", "Delivered and fitted", "Təhvil verildi və uyğunlaşdırıldı"),
        State("followed_up", "Followed up", "Sonrakı yoxlama aparıldı", terminal=True),
    ),
    initial_state="fitting_assessment",
    transitions=(
        # The stock item reserved at request time becomes the survivor's chair...
        Transition("allocate_from_stock", ("fitting_assessment",), "allocated"),
        # ...unless the assessment calls for a chair the stock does not have: the item
        # goes back to stock (and to the next one waiting) and one is procured.
        Transition(
            "procure",
            ("fitting_assessment",),
            "procurement",
            {
                "type": "object",
                "properties": {"order_reference": _TEXT},
                "required": ["order_reference"],
                "additionalProperties": False,
            },
            releases_capacity=True,
        ),
        Transition("receive_procured", ("procurement",), "allocated"),
        Transition(
            "deliver",
            ("allocated",),
            "delivered",
            {
                "type": "object",
                "properties": {"serial_number": _TEXT, "fitted_by": _TEXT},
                "required": ["serial_number", "fitted_by"],
                "additionalProperties": False,
            },
            delivers=True,
        ),
        FOLLOW_UP,
    ),
    follow_up_days=(90,),
    eligibility_rules_yaml="""\
rules:
  - id: wheelchair_mobility
    programmes: [wheelchair]
    expression: walking_difficulty >= 2
    explain:
      pass: {en: "Walking is difficult: a wheelchair can help.",
             az: "Yerimək çətindir: əlil arabası kömək edə bilər."}
      fail: {en: "No walking difficulty was recorded.",
             az: "Yerimədə çətinlik qeydə alınmayıb."}
""",
)

SPA_REHABILITATION = AssistanceTypePlugin(
    type_id="spa_rehabilitation",
    provider_kinds=("SPA_CENTRE", "CLINIC"),
    name_en="Spa rehabilitation treatment",
    name_az="Sanatoriya-kurort müalicəsi",
    capacity_model="session_slots",
    data_schema={
        "type": "object",
        "properties": {
            "sessions": {"type": "integer", "minimum": 1, "maximum": 30},
            "treatment": {"enum": ["naftalan_oil", "mud", "mineral_water", "physiotherapy"]},
        },
        "required": ["sessions", "treatment"],
        "additionalProperties": False,
    },
    states=(
        State("booked", "Booked", "Yer ayrıldı"),
        State("in_course", "In the course", "Müalicə kursunda"),
        State("delivered", "Course completed", "Kurs başa çatdı"),
        State("lapsed", "Lapsed", "Yarımçıq qaldı", terminal=True),
        State("followed_up", "Followed up", "Sonrakı yoxlama aparıldı", terminal=True),
    ),
    initial_state="booked",
    transitions=(
        attendance_transition("attend", ("booked", "in_course"), "in_course"),
        # A finished course frees its slot for the next patient waiting.
        Transition(
            "complete",
            ("in_course",),
            "delivered",
            delivers=True,
            releases_capacity=True,
            requires_full_attendance=True,
        ),
        Transition("lapse", ("booked", "in_course"), "lapsed", releases_capacity=True),
        FOLLOW_UP,
    ),
    follow_up_days=(30,),
    course_length_key="sessions",
)


def _course(type_id: str, name_en: str, name_az: str, levels: list[str]) -> AssistanceTypePlugin:
    """English and computer courses share a lifecycle but stay two independent types."""
    return AssistanceTypePlugin(
        type_id=type_id,
        provider_kinds=("TRAINING_CENTRE",),
        name_en=name_en,
        name_az=name_az,
        capacity_model="seats",
        data_schema={
            "type": "object",
            "properties": {"level": {"enum": levels}},
            "required": ["level"],
            "additionalProperties": False,
        },
        states=(
            State("enrolled", "Enrolled", "Qeydiyyatdan keçdi"),
            State("attending", "Attending", "Dərslərə gedir"),
            State("delivered", "Completed with certificate", "Sertifikatla bitirdi"),
            State("dropped_out", "Dropped out", "Kursu tərk etdi", terminal=True),
            State("followed_up", "Followed up", "Sonrakı yoxlama aparıldı", terminal=True),
        ),
        initial_state="enrolled",
        transitions=(
            attendance_transition("attend", ("enrolled", "attending"), "attending"),
            Transition(
                "complete",
                ("attending",),
                "delivered",
                {
                    "type": "object",
                    "properties": {"certificate_number": _TEXT},
                    "required": ["certificate_number"],
                    "additionalProperties": False,
                },
                delivers=True,
            ),
            # A seat given up goes to the next person on the cohort's waitlist.
            Transition(
                "drop_out", ("enrolled", "attending"), "dropped_out", releases_capacity=True
            ),
            FOLLOW_UP,
        ),
        follow_up_days=(90, 180),
        course_length_from_pool=True,
    )


ENGLISH_COURSE = _course(
    "english_course",
    "English course",
    "İngilis dili kursu",
    ["a1", "a2", "b1", "b2"],
)
COMPUTER_COURSE = _course(
    "computer_course",
    "Computer course",
    "Kompüter kursu",
    ["basic_literacy", "office", "accounting_software"],
)

CARPET_WEAVING = AssistanceTypePlugin(
    type_id="carpet_weaving",
    provider_kinds=("WORKSHOP", "TRAINING_CENTRE"),
    name_en="Carpet-weaving enterprise support",
    name_az="Xalçaçılıq müəssisəsinə dəstək",
    capacity_model="seats",
    data_schema={
        "type": "object",
        "properties": {"enterprise": {"enum": ["home_workshop", "cooperative", "factory"]}},
        "required": ["enterprise"],
        "additionalProperties": False,
    },
    states=(
        State("training", "Training", "Təlim"),
        State("equipping", "Awaiting equipment", "Avadanlıq gözlənilir"),
        State("delivered", "Equipment handed over", "Avadanlıq təhvil verildi"),
        State("joined", "Joined a workshop or cooperative", "Emalatxana və ya kooperativə qoşuldu"),
        State("dropped_out", "Dropped out", "Təlimi tərk etdi", terminal=True),
        State("followed_up", "Followed up", "Sonrakı yoxlama aparıldı", terminal=True),
    ),
    initial_state="training",
    transitions=(
        Transition("complete_training", ("training",), "equipping"),
        Transition("drop_out", ("training",), "dropped_out", releases_capacity=True),
        # Equipment is given in kind: looms, yarn, tools, each with a positive quantity.
        Transition(
            "hand_over_equipment",
            ("equipping",),
            "delivered",
            {
                "type": "object",
                "properties": {
                    "items": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "item": _TEXT,
                                "quantity": {"type": "integer", "minimum": 1},
                            },
                            "required": ["item", "quantity"],
                            "additionalProperties": False,
                        },
                    }
                },
                "required": ["items"],
                "additionalProperties": False,
            },
            delivers=True,
        ),
        Transition(
            "join_workshop",
            ("delivered",),
            "joined",
            {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["workshop", "cooperative"]},
                    "name": _TEXT,
                },
                "required": ["kind", "name"],
                "additionalProperties": False,
            },
        ),
        Transition("follow_up", ("joined",), "followed_up", FOLLOW_UP.data_schema, meets_need=True),
    ),
    follow_up_days=(90, 365),
)
