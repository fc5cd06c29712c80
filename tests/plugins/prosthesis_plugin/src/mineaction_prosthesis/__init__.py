"""Prosthesis provision: referral to a prosthetic-orthopaedic centre, casting, fitting,
gait training, then follow-ups at 1, 6 and 12 months, when a socket is often refitted."""

from services.assistance.catalogue import AssistanceTypePlugin, State, Transition

PROSTHESIS = AssistanceTypePlugin(
    type_id="prosthesis",
    name_en="Prosthesis",
    name_az="Protez",
    capacity_model="none",
    provider_kinds=("CLINIC",),  # prosthetic-orthopaedic centres only
    data_schema={
        "type": "object",
        "properties": {
            "limb": {"enum": ["below_knee", "above_knee", "below_elbow", "above_elbow"]},
            "side": {"enum": ["left", "right"]},
        },
        "required": ["limb", "side"],
        "additionalProperties": False,
    },
    states=(
        State("referred", "Referred to the centre", "Mərkəzə göndərildi"),
        State("cast_taken", "Cast taken", "Qəlib götürüldü"),
        State("delivered", "Fitted", "Protez taxıldı"),
        State("gait_trained", "Gait training done", "Yeriş təlimi keçildi"),
        State("followed_up", "Followed up", "Sonrakı yoxlama aparıldı", terminal=True),
    ),
    initial_state="referred",
    transitions=(
        Transition("take_cast", ("referred",), "cast_taken"),
        Transition(
            "fit",
            ("cast_taken",),
            "delivered",
            {
                "type": "object",
                "properties": {"component_ref": {"type": "string", "minLength": 1}},
                "required": ["component_ref"],
            },
            delivers=True,
        ),
        Transition("complete_gait_training", ("delivered",), "gait_trained"),
        Transition("follow_up", ("gait_trained",), "followed_up", meets_need=True),
    ),
    follow_up_days=(30, 180, 365),
    eligibility_rules_yaml="""\
rules:
  - id: prosthesis_limb_loss
    programmes: [prosthesis]
    expression: "'lower_limb_amputation' in injuries || 'upper_limb_amputation' in injuries"
    explain:
      pass: {en: "A limb was lost: a prosthesis can restore function.",
             az: "Əza itirilib: protez funksiyanı bərpa edə bilər."}
      fail: {en: "No limb loss was recorded.", az: "Əza itkisi qeydə alınmayıb."}
""",
)
