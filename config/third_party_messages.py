"""Strings of the packages the admin shows, translated in our ``locale/fr`` instead of theirs.

``makemessages`` only collects the strings of this project: listing a package's msgid
here puts it in ``locale/fr/LC_MESSAGES/django.po``, whose translations come first
(``LOCALE_PATHS``). Nothing imports this module.
"""

from django.utils.translation import gettext_noop

THIRD_PARTY_MESSAGES = [
    # django.contrib.admin: its French "Affichage de %s" / "Modification de %s" / "Ajout
    # de %s" read "Affichage de envoi" before a vowel; a colon needs no elision.
    gettext_noop("View %s"),
    gettext_noop("Change %s"),
    gettext_noop("Add %s"),
    # django-simple-history: its version pages; its French has no "Changes".
    gettext_noop("Changes"),
    gettext_noop("Changed by"),
    gettext_noop("None"),
    gettext_noop("Change reason"),
]
