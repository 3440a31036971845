"""The people of the department, one per role, for tests. Synthetic names only."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import Group, User

from core import roles

PASSWORD = "correct-horse-battery-staple"


@dataclass
class Personas:
    front_desk: User
    technologist: User
    radiologist: User
    transcriptionist: User
    referring_physician: User
    other_physician: User
    patient: User
    admin: User
    outsider: User  # logged in, but holds no role

    def all(self) -> dict[str, User]:
        return dict(vars(self))


def make_user(username: str, role: str | None, *, staff: bool = False) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=staff)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    return user


def make_personas() -> Personas:
    return Personas(
        front_desk=make_user("frontdesk", roles.FRONT_DESK),
        technologist=make_user("tech", roles.TECHNOLOGIST),
        radiologist=make_user("rad", roles.RADIOLOGIST),
        transcriptionist=make_user("typist", roles.TRANSCRIPTIONIST),
        referring_physician=make_user("drref", roles.REFERRING_PHYSICIAN),
        other_physician=make_user("drother", roles.REFERRING_PHYSICIAN),
        patient=make_user("patient", roles.PATIENT),
        admin=make_user("admin", roles.ADMINISTRATOR, staff=True),
        outsider=make_user("outsider", None),
    )
