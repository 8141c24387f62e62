"""Who may do what: every API operation and every admin page, for every kind of caller.

Each table below has one row per operation and one column per principal; each cell is the
outcome that principal gets, and each cell is a test of its own
(``test_api[GET /api/v1/accounts/ | manager]``). The guard tests at the end fail when a URL
pattern, an API operation, an admin model, page or action appears without its row.

Principals (columns):

    anon     no credentials
    svc      ``Authorization: Token`` of a user in "Usage services"
    mgr-tok  ``Authorization: Token`` of a user in "Account managers" (not staff)
    revoked  a token that was deleted in the admin (Knox > Auth tokens)
    staff    a staff user in no group, logged in to the admin (session)
    manager  a staff user in "Account managers", logged in (session)
    super    a superuser, logged in (session)

Tokens authenticate the API only: to the admin a token holder is anonymous. People reach
the API with their admin session (the browsable API), so the last three columns use it.

Outcomes (cells):

    200 201 302 400 401 403 404  the status code
    login  a redirect to the admin's login page, with ``next`` the page asked for
    done   (admin actions) the action ran: its effect is stored
    none   (admin actions) the action is not offered to this user: the list answers
           "No action selected." and nothing changes

A cell that refuses (401, 403, 404, login, none) also asserts that nothing was written: no
row added or removed in any table, no admin log entry.

Operations (rows): ``METHOD /path/`` for the API and the other URLs, with ``{account}`` an
Enterprise account's id and ``{unknown}`` an id no account has; ``METHOD model page`` for
an admin page of a registered model (``version`` is a past version of an account, its
"Revert" page; ``object`` the old change URL, which redirects); ``METHOD site page`` for
the admin site's own pages; ``model action`` for an admin action on one selected row.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.db.models import Model
from django.forms.models import model_to_dict
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from knox.models import AuthToken
from rest_framework.test import APIClient

from accounts.models import Account, Level
from accounts.roles import ACCOUNT_MANAGERS, USAGE_SERVICES
from notifications.models import (
    Delivery,
    EarlyTrackingEvent,
    Notification,
    WebhookDelivery,
    WebhookEndpoint,
)
from tests.factories import AccountFactory, LimitFactory, RecipientFactory, UserFactory
from tests.notifications.factories import DeliveryFactory, usage_already_counted
from usage.models import (
    CounterRepair,
    EventPurge,
    Extension,
    Reservation,
    UsageCounter,
    UsageEvent,
)
from usage.periods import period_containing

# Status codes per role and operation: the clock decides none of them, so the hard
# instants of `make test-instants` leave this module out (marker ``timeless``).
pytestmark = [pytest.mark.django_db, pytest.mark.timeless]

PRINCIPALS = ("anon", "svc", "mgr-tok", "revoked", "staff", "manager", "super")
RESERVATION_ID = "job-1"

# --- The API (every method of every path of the OpenAPI schema, and of the docs) ---
# Unsupported methods answer 403 to an authenticated caller: the permission check, which
# runs before DRF looks for a handler, finds no permission listed for them.

API = """
operation                                                                anon  svc  mgr-tok  revoked  staff  manager  super
GET     /api/v1/accounts/                                                401   200  200      401      403    200      200
HEAD    /api/v1/accounts/                                                401   200  200      401      403    200      200
OPTIONS /api/v1/accounts/                                                401   200  200      401      403    200      200
POST    /api/v1/accounts/                                                401   405  405      401      405    405      405
PUT     /api/v1/accounts/                                                401   405  405      401      405    405      405
PATCH   /api/v1/accounts/                                                401   405  405      401      405    405      405
DELETE  /api/v1/accounts/                                                401   405  405      401      405    405      405
GET     /api/v1/accounts/{account}/                                      401   200  200      401      403    200      200
GET     /api/v1/accounts/{unknown}/                                      401   404  404      401      403    404      404
HEAD    /api/v1/accounts/{account}/                                      401   200  200      401      403    200      200
OPTIONS /api/v1/accounts/{account}/                                      401   200  200      401      403    200      200
POST    /api/v1/accounts/{account}/                                      401   405  405      401      405    405      405
PUT     /api/v1/accounts/{account}/                                      401   405  405      401      405    405      405
PATCH   /api/v1/accounts/{account}/                                      401   405  405      401      405    405      405
DELETE  /api/v1/accounts/{account}/                                      401   405  405      401      405    405      405
GET     /api/v1/accounts/{account}/limits/                               401   403  200      401      403    200      200
GET     /api/v1/accounts/{unknown}/limits/                               401   403  404      401      403    404      404
PUT     /api/v1/accounts/{account}/limits/                               401   403  200      401      403    200      200
PUT     /api/v1/accounts/{unknown}/limits/                               401   403  404      401      403    404      404
PATCH   /api/v1/accounts/{account}/limits/                               401   403  200      401      403    200      200
PATCH   /api/v1/accounts/{unknown}/limits/                               401   403  404      401      403    404      404
HEAD    /api/v1/accounts/{account}/limits/                               401   403  200      401      403    200      200
OPTIONS /api/v1/accounts/{account}/limits/                               401   403  200      401      403    200      200
POST    /api/v1/accounts/{account}/limits/                               401   405  405      401      405    405      405
DELETE  /api/v1/accounts/{account}/limits/                               401   405  405      401      405    405      405
GET     /api/v1/accounts/{account}/capacities/                           401   200  200      401      403    200      200
GET     /api/v1/accounts/{unknown}/capacities/                           401   404  404      401      403    404      404
HEAD    /api/v1/accounts/{account}/capacities/                           401   200  200      401      403    200      200
OPTIONS /api/v1/accounts/{account}/capacities/                           401   200  200      401      403    200      200
POST    /api/v1/accounts/{account}/capacities/                           401   405  405      401      405    405      405
PUT     /api/v1/accounts/{account}/capacities/                           401   405  405      401      405    405      405
PATCH   /api/v1/accounts/{account}/capacities/                           401   405  405      401      405    405      405
DELETE  /api/v1/accounts/{account}/capacities/                           401   405  405      401      405    405      405
GET     /api/v1/accounts/{account}/webhooks/                             401   403  200      401      403    200      200
GET     /api/v1/accounts/{unknown}/webhooks/                             401   403  404      401      403    404      404
PUT     /api/v1/accounts/{account}/webhooks/                             401   403  200      401      403    200      200
PUT     /api/v1/accounts/{unknown}/webhooks/                             401   403  404      401      403    404      404
HEAD    /api/v1/accounts/{account}/webhooks/                             401   403  200      401      403    200      200
OPTIONS /api/v1/accounts/{account}/webhooks/                             401   403  200      401      403    200      200
POST    /api/v1/accounts/{account}/webhooks/                             401   405  405      401      405    405      405
PATCH   /api/v1/accounts/{account}/webhooks/                             401   405  405      401      405    405      405
DELETE  /api/v1/accounts/{account}/webhooks/                             401   405  405      401      405    405      405
GET     /api/v1/accounts/{account}/usage/                                401   200  200      401      403    200      200
GET     /api/v1/accounts/{unknown}/usage/                                401   404  404      401      403    404      404
HEAD    /api/v1/accounts/{account}/usage/                                401   200  200      401      403    200      200
OPTIONS /api/v1/accounts/{account}/usage/                                401   200  200      401      403    200      200
POST    /api/v1/accounts/{account}/usage/                                401   405  405      401      405    405      405
PUT     /api/v1/accounts/{account}/usage/                                401   405  405      401      405    405      405
PATCH   /api/v1/accounts/{account}/usage/                                401   405  405      401      405    405      405
DELETE  /api/v1/accounts/{account}/usage/                                401   405  405      401      405    405      405
POST    /api/v1/accounts/{account}/usage/check/                          401   200  403      401      403    403      200
POST    /api/v1/accounts/{unknown}/usage/check/                          401   404  403      401      403    403      404
GET     /api/v1/accounts/{account}/usage/check/                          401   405  405      401      405    405      405
HEAD    /api/v1/accounts/{account}/usage/check/                          401   405  405      401      405    405      405
OPTIONS /api/v1/accounts/{account}/usage/check/                          401   200  403      401      403    403      200
PUT     /api/v1/accounts/{account}/usage/check/                          401   405  405      401      405    405      405
PATCH   /api/v1/accounts/{account}/usage/check/                          401   405  405      401      405    405      405
DELETE  /api/v1/accounts/{account}/usage/check/                          401   405  405      401      405    405      405
POST    /api/v1/accounts/{account}/usage/reservations/                   401   201  403      401      403    403      201
POST    /api/v1/accounts/{unknown}/usage/reservations/                   401   404  403      401      403    403      404
GET     /api/v1/accounts/{account}/usage/reservations/                   401   405  405      401      405    405      405
HEAD    /api/v1/accounts/{account}/usage/reservations/                   401   405  405      401      405    405      405
OPTIONS /api/v1/accounts/{account}/usage/reservations/                   401   200  403      401      403    403      200
PUT     /api/v1/accounts/{account}/usage/reservations/                   401   405  405      401      405    405      405
PATCH   /api/v1/accounts/{account}/usage/reservations/                   401   405  405      401      405    405      405
DELETE  /api/v1/accounts/{account}/usage/reservations/                   401   405  405      401      405    405      405
GET     /api/v1/accounts/{account}/usage/reservations/{reservation_id}/  401   200  200      401      403    200      200
GET     /api/v1/accounts/{unknown}/usage/reservations/{reservation_id}/  401   404  404      401      403    404      404
HEAD    /api/v1/accounts/{account}/usage/reservations/{reservation_id}/  401   200  200      401      403    200      200
OPTIONS /api/v1/accounts/{account}/usage/reservations/{reservation_id}/  401   200  200      401      403    200      200
DELETE  /api/v1/accounts/{account}/usage/reservations/{reservation_id}/  401   200  403      401      403    403      200
DELETE  /api/v1/accounts/{unknown}/usage/reservations/{reservation_id}/  401   404  403      401      403    403      404
POST    /api/v1/accounts/{account}/usage/reservations/{reservation_id}/  401   405  405      401      405    405      405
PUT     /api/v1/accounts/{account}/usage/reservations/{reservation_id}/  401   405  405      401      405    405      405
PATCH   /api/v1/accounts/{account}/usage/reservations/{reservation_id}/  401   405  405      401      405    405      405
POST    /api/v1/usage/events/                                            401   201  403      401      403    403      201
GET     /api/v1/usage/events/                                            401   405  405      401      405    405      405
HEAD    /api/v1/usage/events/                                            401   405  405      401      405    405      405
OPTIONS /api/v1/usage/events/                                            401   200  403      401      403    403      200
PUT     /api/v1/usage/events/                                            401   405  405      401      405    405      405
PATCH   /api/v1/usage/events/                                            401   405  405      401      405    405      405
DELETE  /api/v1/usage/events/                                            401   405  405      401      405    405      405
GET     /api/v1/schema/                                                  200   200  200      401      200    200      200
GET     /api/v1/docs/                                                    200   200  200      401      200    200      200
"""

# --- Other URLs: the language switch and the e-mail provider's tracking webhook ---
# The webhook authenticates the provider by the basic-auth secret alone: a token or a
# session is neither needed nor enough. "off" is without ANYMAIL_WEBHOOK_SECRET.

OTHER = """
operation                                         anon  svc  mgr-tok revoked staff manager super
POST    /i18n/setlang/                             302  302  302     302     302   302     302
POST    /anymail/postmark/tracking/ off            404  404  404     404     404   404     404
POST    /anymail/postmark/tracking/ no-secret      400  400  400     400     400   400     400
POST    /anymail/postmark/tracking/ wrong-secret   400  400  400     400     400   400     400
POST    /anymail/postmark/tracking/ secret         200  200  200     200     200   200     200
"""

# --- The admin site's own pages ---

SITE = """
operation                          anon   svc    mgr-tok revoked staff manager super
GET   site index                   login  login  login   login   200   200     200
GET   site login                   200    200    200     200     302   302     302
POST  site logout                  302    302    302     302     200   200     200
GET   site password_change         login  login  login   login   200   200     200
GET   site password_change_done    login  login  login   login   200   200     200
GET   site jsi18n                  login  login  login   login   200   200     200
GET   site autocomplete            login  login  login   login   403   403     403
GET   site view_on_site            login  login  login   login   404   404     404
GET   site app_list:auth           login  login  login   login   404   404     200
GET   site app_list:knox           login  login  login   login   404   404     200
GET   site app_list:accounts       login  login  login   login   404   200     200
GET   site app_list:usage          login  login  login   login   404   200     200
GET   site app_list:notifications  login  login  login   login   404   200     200
GET   site catch_all               login  login  login   login   404   404     404
"""

# --- Every page of every registered model ---
# POST add and change send an empty form: 200 is the form shown again with its errors
# (the user may write), 403 a refusal. POST delete confirms the deletion. POST version
# sends the past version back as its "Revert" button does.
# Account managers change limits and recipients on the account page, never the account's
# own fields (synced from the CRM): they may see its past versions, not revert to one.
# Usage rows, notifications and deliveries are read-only for everyone: they are facts.

PAGES = """
operation                                         anon   svc    mgr-tok revoked staff manager super
GET   accounts.account changelist                 login  login  login   login   403   200     200
GET   accounts.account add                        login  login  login   login   403   403     200
POST  accounts.account add                        login  login  login   login   403   403     200
GET   accounts.account change                     login  login  login   login   403   200     200
POST  accounts.account change                     login  login  login   login   403   200     200
GET   accounts.account delete                     login  login  login   login   403   403     200
POST  accounts.account delete                     login  login  login   login   403   403     302
GET   accounts.account history                    login  login  login   login   403   200     200
GET   accounts.account version                    login  login  login   login   403   200     200
POST  accounts.account version                    login  login  login   login   403   403     302
GET   accounts.account object                     login  login  login   login   302   302     302
GET   auth.group changelist                       login  login  login   login   403   403     200
GET   auth.group add                              login  login  login   login   403   403     200
POST  auth.group add                              login  login  login   login   403   403     200
GET   auth.group change                           login  login  login   login   403   403     200
POST  auth.group change                           login  login  login   login   403   403     200
GET   auth.group delete                           login  login  login   login   403   403     200
POST  auth.group delete                           login  login  login   login   403   403     302
GET   auth.group history                          login  login  login   login   403   403     200
GET   auth.group object                           login  login  login   login   302   302     302
GET   auth.user changelist                        login  login  login   login   403   403     200
GET   auth.user add                               login  login  login   login   403   403     200
POST  auth.user add                               login  login  login   login   403   403     200
GET   auth.user change                            login  login  login   login   403   403     200
POST  auth.user change                            login  login  login   login   403   403     200
GET   auth.user delete                            login  login  login   login   403   403     200
POST  auth.user delete                            login  login  login   login   403   403     302
GET   auth.user history                           login  login  login   login   403   403     200
GET   auth.user password                          login  login  login   login   403   403     200
POST  auth.user password                          login  login  login   login   403   403     200
GET   auth.user object                            login  login  login   login   302   302     302
GET   knox.authtoken changelist                   login  login  login   login   403   403     200
GET   knox.authtoken add                          login  login  login   login   403   403     200
POST  knox.authtoken add                          login  login  login   login   403   403     200
GET   knox.authtoken change                       login  login  login   login   403   403     200
POST  knox.authtoken change                       login  login  login   login   403   403     200
GET   knox.authtoken delete                       login  login  login   login   403   403     200
POST  knox.authtoken delete                       login  login  login   login   403   403     302
GET   knox.authtoken history                      login  login  login   login   403   403     200
GET   knox.authtoken object                       login  login  login   login   302   302     302
GET   notifications.notification changelist      login  login  login   login   403   200     200
GET   notifications.notification add             login  login  login   login   403   403     403
POST  notifications.notification add             login  login  login   login   403   403     403
GET   notifications.notification change          login  login  login   login   403   200     200
POST  notifications.notification change          login  login  login   login   403   403     403
GET   notifications.notification delete          login  login  login   login   403   403     403
POST  notifications.notification delete          login  login  login   login   403   403     403
GET   notifications.notification history         login  login  login   login   403   200     200
GET   notifications.notification object          login  login  login   login   302   302     302
GET   notifications.delivery changelist          login  login  login   login   403   200     200
GET   notifications.delivery add                 login  login  login   login   403   403     403
POST  notifications.delivery add                 login  login  login   login   403   403     403
GET   notifications.delivery change              login  login  login   login   403   200     200
POST  notifications.delivery change              login  login  login   login   403   403     403
GET   notifications.delivery delete              login  login  login   login   403   403     403
POST  notifications.delivery delete              login  login  login   login   403   403     403
GET   notifications.delivery history             login  login  login   login   403   200     200
GET   notifications.delivery object              login  login  login   login   302   302     302
GET   notifications.webhookendpoint changelist   login  login  login   login   403   200     200
GET   notifications.webhookendpoint add          login  login  login   login   403   200     200
POST  notifications.webhookendpoint add          login  login  login   login   403   200     200
GET   notifications.webhookendpoint change       login  login  login   login   403   200     200
POST  notifications.webhookendpoint change       login  login  login   login   403   200     200
GET   notifications.webhookendpoint delete       login  login  login   login   403   200     200
POST  notifications.webhookendpoint delete       login  login  login   login   403   302     302
GET   notifications.webhookendpoint history      login  login  login   login   403   200     200
GET   notifications.webhookendpoint object       login  login  login   login   302   302     302
GET   notifications.webhookdelivery changelist   login  login  login   login   403   200     200
GET   notifications.webhookdelivery add          login  login  login   login   403   403     403
POST  notifications.webhookdelivery add          login  login  login   login   403   403     403
GET   notifications.webhookdelivery change       login  login  login   login   403   200     200
POST  notifications.webhookdelivery change       login  login  login   login   403   403     403
GET   notifications.webhookdelivery delete       login  login  login   login   403   403     403
POST  notifications.webhookdelivery delete       login  login  login   login   403   403     403
GET   notifications.webhookdelivery history      login  login  login   login   403   200     200
GET   notifications.webhookdelivery object       login  login  login   login   302   302     302
GET   notifications.earlytrackingevent changelist login login login  login   403   403     200
GET   notifications.earlytrackingevent add       login  login  login   login   403   403     403
POST  notifications.earlytrackingevent add       login  login  login   login   403   403     403
GET   notifications.earlytrackingevent change    login  login  login   login   403   403     200
POST  notifications.earlytrackingevent change    login  login  login   login   403   403     403
GET   notifications.earlytrackingevent delete    login  login  login   login   403   403     403
POST  notifications.earlytrackingevent delete    login  login  login   login   403   403     403
GET   notifications.earlytrackingevent history   login  login  login   login   403   403     200
GET   notifications.earlytrackingevent object    login  login  login   login   302   302     302
GET   usage.usageevent changelist                 login  login  login   login   403   200     200
GET   usage.usageevent add                        login  login  login   login   403   403     403
POST  usage.usageevent add                        login  login  login   login   403   403     403
GET   usage.usageevent change                     login  login  login   login   403   200     200
POST  usage.usageevent change                     login  login  login   login   403   403     403
GET   usage.usageevent delete                     login  login  login   login   403   403     403
POST  usage.usageevent delete                     login  login  login   login   403   403     403
GET   usage.usageevent history                    login  login  login   login   403   200     200
GET   usage.usageevent object                     login  login  login   login   302   302     302
GET   usage.usagecounter changelist               login  login  login   login   403   200     200
GET   usage.usagecounter add                      login  login  login   login   403   403     403
POST  usage.usagecounter add                      login  login  login   login   403   403     403
GET   usage.usagecounter change                   login  login  login   login   403   200     200
POST  usage.usagecounter change                   login  login  login   login   403   403     403
GET   usage.usagecounter delete                   login  login  login   login   403   403     403
POST  usage.usagecounter delete                   login  login  login   login   403   403     403
GET   usage.usagecounter history                  login  login  login   login   403   200     200
GET   usage.usagecounter object                   login  login  login   login   302   302     302
GET   usage.extension changelist                  login  login  login   login   403   200     200
GET   usage.extension add                         login  login  login   login   403   403     403
POST  usage.extension add                         login  login  login   login   403   403     403
GET   usage.extension change                      login  login  login   login   403   200     200
POST  usage.extension change                      login  login  login   login   403   403     403
GET   usage.extension delete                      login  login  login   login   403   403     403
POST  usage.extension delete                      login  login  login   login   403   403     403
GET   usage.extension history                     login  login  login   login   403   200     200
GET   usage.extension object                      login  login  login   login   302   302     302
GET   usage.counterrepair changelist              login  login  login   login   403   403     200
GET   usage.counterrepair add                     login  login  login   login   403   403     403
POST  usage.counterrepair add                     login  login  login   login   403   403     403
GET   usage.counterrepair change                  login  login  login   login   403   403     200
POST  usage.counterrepair change                  login  login  login   login   403   403     403
GET   usage.counterrepair delete                  login  login  login   login   403   403     403
POST  usage.counterrepair delete                  login  login  login   login   403   403     403
GET   usage.counterrepair history                 login  login  login   login   403   403     200
GET   usage.counterrepair object                  login  login  login   login   302   302     302
GET   usage.reservation changelist               login  login  login   login   403   200     200
GET   usage.reservation add                      login  login  login   login   403   403     403
POST  usage.reservation add                      login  login  login   login   403   403     403
GET   usage.reservation change                   login  login  login   login   403   200     200
POST  usage.reservation change                   login  login  login   login   403   403     403
GET   usage.reservation delete                   login  login  login   login   403   403     403
POST  usage.reservation delete                   login  login  login   login   403   403     403
GET   usage.reservation history                  login  login  login   login   403   200     200
GET   usage.reservation object                   login  login  login   login   302   302     302
GET   usage.eventpurge changelist                 login  login  login   login   403   403     200
GET   usage.eventpurge add                        login  login  login   login   403   403     403
POST  usage.eventpurge add                        login  login  login   login   403   403     403
GET   usage.eventpurge change                     login  login  login   login   403   403     200
POST  usage.eventpurge change                     login  login  login   login   403   403     403
GET   usage.eventpurge delete                     login  login  login   login   403   403     403
POST  usage.eventpurge delete                     login  login  login   login   403   403     403
GET   usage.eventpurge history                    login  login  login   login   403   403     200
GET   usage.eventpurge object                     login  login  login   login   302   302     302
"""

# --- Every admin action, on one selected row ---
# Evaluating thresholds and sending a test notification take the right to change the
# account (account managers have it through limits); resending takes the right to change
# deliveries; deleting in bulk takes the right to delete, which nobody has on the ledger
# and usage rows. A cell other than "done" also asserts that the action did nothing; 200
# is the list shown again, when it offers no action at all to this user.

ACTIONS = """
operation                                                   anon   svc    mgr-tok revoked staff manager super
accounts.account evaluate_thresholds_now                    login  login  login   login   403   done    done
accounts.account send_test_notification                     login  login  login   login   403   done    done
accounts.account delete_selected                            login  login  login   login   403   none    done
notifications.notification resend_failed_deliveries         login  login  login   login   403   done    done
notifications.delivery resend_failed_deliveries             login  login  login   login   403   done    done
notifications.webhookdelivery resend_failed_deliveries      login  login  login   login   403   done    done
notifications.webhookendpoint delete_selected               login  login  login   login   403   done    done
notifications.webhookdelivery delete_selected               login  login  login   login   403   none    none
auth.group delete_selected                                  login  login  login   login   403   403     done
auth.user delete_selected                                   login  login  login   login   403   403     done
knox.authtoken delete_selected                              login  login  login   login   403   403     done
notifications.notification delete_selected                 login  login  login   login   403   none    none
notifications.delivery delete_selected                     login  login  login   login   403   none    none
notifications.earlytrackingevent delete_selected           login  login  login   login   403   403     200
usage.usageevent delete_selected                            login  login  login   login   403   200     200
usage.usagecounter delete_selected                          login  login  login   login   403   200     200
usage.extension delete_selected                             login  login  login   login   403   200     200
usage.counterrepair delete_selected                         login  login  login   login   403   403     200
usage.eventpurge delete_selected                            login  login  login   login   403   403     200
usage.reservation delete_selected                           login  login  login   login   403   200     200
"""


# --- Reading the tables ---


def table(text: str) -> dict[str, dict[str, str]]:
    """``operation -> {principal: outcome}`` from a table: a header line, then one row a line."""
    header, *rows = [line.split() for line in text.strip().splitlines()]
    principals = tuple(header[-len(PRINCIPALS) :])
    assert principals == PRINCIPALS, header
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        operation = " ".join(row[: -len(PRINCIPALS)])
        assert operation not in found, f"two rows for {operation}"
        found[operation] = dict(zip(PRINCIPALS, row[-len(PRINCIPALS) :], strict=True))
    return found


API_TABLE = table(API)
OTHER_TABLE = table(OTHER)
SITE_TABLE = table(SITE)
PAGES_TABLE = table(PAGES)
ACTIONS_TABLE = table(ACTIONS)


def cells(rows: dict[str, dict[str, str]]) -> list[Any]:
    return [
        pytest.param(operation, principal, outcome, id=f"{operation} | {principal}")
        for operation, outcomes in rows.items()
        for principal, outcome in outcomes.items()
    ]


# --- The principals ---


def _group_user(group: str | None, **fields: Any):
    user = UserFactory(**fields)
    if group is not None:
        user.groups.add(Group.objects.get(name=group))
    return user


def _token_client(user) -> APIClient:
    _, key = AuthToken.objects.create(user=user, expiry=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def principal_client(principal: str) -> APIClient:
    """A client that makes its requests as ``principal``."""
    if principal == "anon":
        return APIClient()
    if principal == "svc":
        return _token_client(_group_user(USAGE_SERVICES, username="svc"))
    if principal == "mgr-tok":
        return _token_client(_group_user(ACCOUNT_MANAGERS, username="mgr-tok"))
    if principal == "revoked":
        user = _group_user(ACCOUNT_MANAGERS, username="revoked")
        client = _token_client(user)
        AuthToken.objects.filter(user=user).delete()
        return client
    user = {
        "staff": lambda: _group_user(None, username="staff", is_staff=True),
        "manager": lambda: _group_user(ACCOUNT_MANAGERS, username="manager", is_staff=True),
        "super": lambda: _group_user(None, username="super", is_staff=True, is_superuser=True),
    }[principal]()
    client = APIClient()
    client.force_login(user)
    return client


# --- What a refusal must leave alone ---


def written() -> dict[str, int]:
    """The number of rows of every table but sessions: a refused request changes none."""
    return {
        model._meta.label: model._default_manager.count()
        for model in apps.get_models()
        if model is not Session
    }


def assert_outcome(response, outcome: str, asked: str) -> None:
    if outcome == "login":
        assert response.status_code == 302, response.status_code
        assert response.headers["Location"].startswith(reverse("admin:login") + "?next="), (
            response.headers["Location"]
        )
        return
    assert response.status_code == int(outcome), (response.status_code, asked)


REFUSALS = {"401", "403", "404", "login", "none"}


# --- The API ---

LIMITS = {
    "limits": {"text_tokens": {"warning": 100, "blocked": 200}},
    "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
}


def api_body(method: str, template: str, account: Account) -> dict[str, Any] | list | None:
    """A valid body for the operation, so that an allowed caller gets its success code."""
    if method in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return None
    if template.endswith("/limits/"):
        return LIMITS
    if template.endswith("/webhooks/"):
        return []
    if template.endswith("/usage/check/"):
        return {"metric": "text_tokens", "quantity": 1}
    if template.endswith("/usage/reservations/"):
        return {"reservation_id": "matrix-1", "metric": "text_tokens", "quantity": 1}
    if template == "/api/v1/usage/events/":
        return {
            "event_id": "matrix-1",
            "account": str(account.pk),
            "metric": "text_tokens",
            "quantity": 1,
        }
    return {}


def api_request(client: APIClient, operation: str, account: Account):
    method, template = operation.split()
    path = template.format(
        account=account.pk, unknown=uuid.UUID(int=1), reservation_id=RESERVATION_ID
    )
    body = api_body(method, template, account)
    send = getattr(client, method.lower())
    if body is None:
        return send(path)
    return send(path, data=json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(("operation", "principal", "outcome"), cells(API_TABLE))
def test_api(operation: str, principal: str, outcome: str):
    # given
    account = AccountFactory()
    if "{reservation_id}" in operation:
        reservation_of(account)
    client = principal_client(principal)
    before = written()
    # when
    response = api_request(client, operation, account)
    # then
    assert_outcome(response, outcome, operation)
    if outcome in REFUSALS:
        assert written() == before


# --- Other URLs ---

WEBHOOK_SECRET = "anymail-user:s3cret-pass"


@pytest.mark.parametrize(("operation", "principal", "outcome"), cells(OTHER_TABLE))
def test_other_urls(operation: str, principal: str, outcome: str, settings):
    # given
    method, path, *variant = operation.split()
    client = principal_client(principal)
    headers: dict[str, str] = {}
    if path.startswith("/anymail/") and variant != ["off"]:
        settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
        settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "token", "WEBHOOK_SECRET": WEBHOOK_SECRET}
        secret = {"no-secret": None, "wrong-secret": "anymail-user:guess"}.get(
            variant[0], WEBHOOK_SECRET
        )
        if secret is not None:
            # The provider's basic auth takes the place of a token's Authorization header.
            client.credentials()
            headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(secret.encode()).decode()
    before = written()
    # when
    if path == "/i18n/setlang/":
        response = client.post(path, {"language": "fr", "next": "/admin/"})
    else:
        response = client.generic(
            method, path, json.dumps({"RecordType": "Open"}), "application/json", **headers
        )
    # then
    assert_outcome(response, outcome, operation)
    if outcome in REFUSALS:
        assert written() == before


# --- The admin ---


def admin_object(label: str) -> Model:
    """One row of the registered model ``label``, for its change, delete and history pages."""
    account = AccountFactory()
    if label == "accounts.account":
        return account
    if label == "auth.group":
        return Group.objects.create(name="Billing")
    if label == "auth.user":
        return UserFactory(username="someone")
    if label == "knox.authtoken":
        return AuthToken.objects.create(user=UserFactory(username="someone"), expiry=None)[0]
    if label == "notifications.notification":
        return failed_delivery(account).notification
    if label == "notifications.delivery":
        return failed_delivery(account)
    if label == "notifications.webhookendpoint":
        return webhook_endpoint(account)
    if label == "notifications.webhookdelivery":
        return failed_webhook_delivery(account)
    if label == "notifications.earlytrackingevent":
        return EarlyTrackingEvent.objects.create(esp_message_id="m-1", event_type="delivered")
    now = timezone.now()
    today = now.astimezone(account.zone).date()
    if label == "usage.usageevent":
        return UsageEvent.objects.create(
            account=account,
            event_id="evt-1",
            metric="text_tokens",
            quantity_milli=1000,
            occurred_at=now,
            received_at=now,
        )
    if label == "usage.usagecounter":
        return UsageCounter.objects.create(
            account=account, metric="text_tokens", day=today, quantity_milli=1000, updated_at=now
        )
    if label == "usage.extension":
        return Extension.objects.create(
            account=account,
            metric="text_tokens",
            period=period_containing(now, account.zone).first_day,
            amount=10,
            reason="Launch week",
        )
    if label == "usage.counterrepair":
        return CounterRepair.objects.create(
            account=account,
            metric="text_tokens",
            day=today,
            found_milli=0,
            expected_milli=1000,
            repaired_by="rebuild_usage",
        )
    if label == "usage.eventpurge":
        return EventPurge.objects.create(before=today, deleted=3)
    if label == "usage.reservation":
        return reservation_of(account)
    raise LookupError(f"no row to show for {label}: add one to admin_object()")


def reservation_of(account: Account) -> Reservation:
    now = timezone.now()
    return Reservation.objects.create(
        account=account,
        reservation_id=RESERVATION_ID,
        metric="text_tokens",
        quantity_milli=1000,
        created_at=now,
        expires_at=now + timedelta(minutes=15),
    )


def failed_delivery(account: Account) -> Delivery:
    return DeliveryFactory(
        notification__account=account,
        status=Delivery.Status.FAILED,
        esp_message_id="",
        last_error="Connection reset",
    )


def webhook_endpoint(account: Account) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        account=account, url="https://crm.example.com/hooks", levels=["warning"], secret="whsec_x"
    )


def failed_webhook_delivery(account: Account) -> WebhookDelivery:
    notification = failed_delivery(account).notification
    return WebhookDelivery.objects.create(
        notification=notification,
        endpoint=webhook_endpoint(account),
        url="https://crm.example.com/hooks",
        webhook_id="msg_matrix",
        status=WebhookDelivery.Status.FAILED,
        attempts=8,
        last_error="The endpoint answered HTTP 503.",
    )


def page_url(label: str, page: str, pk: Any = 1, version_id: Any = 1) -> str:
    """The URL of ``page`` of the model ``label``'s admin, about the row ``pk``."""
    info = label.replace(".", "_")
    if page in ("changelist", "add"):
        return reverse(f"admin:{info}_{page}")
    if page == "object":
        return reverse(f"admin:{info}_change", args=[pk]).removesuffix("change/")
    if page == "version":
        return reverse(f"admin:{info}_simple_history", args=[pk, version_id])
    if page == "password":
        return reverse(f"admin:{info}_password_change", args=[pk])
    return reverse(f"admin:{info}_{page}", args=[pk])


def page_body(page: str, obj: Model) -> dict[str, Any]:
    if page == "delete":
        return {"post": "yes"}
    if page == "version":
        # What the Revert button posts: the past version's own fields.
        version = obj.history.earliest("history_date").instance
        return {
            key: value
            for key, value in model_to_dict(version).items()
            if value is not None and key != "id"
        }
    return {}


@pytest.mark.parametrize(("operation", "principal", "outcome"), cells(PAGES_TABLE))
def test_admin_pages(operation: str, principal: str, outcome: str):
    # given
    method, label, page = operation.split()
    obj = admin_object(label)
    version_id = None
    if page == "version":
        version_id = obj.history.earliest("history_date").history_id
        obj.name = "Renamed"  # so that there is something to revert
        obj.save()
    url = page_url(label, page, obj.pk, version_id)
    client = principal_client(principal)
    before = written()
    # when
    body = page_body(page, obj) if method == "POST" else None
    response = client.generic(method, url) if body is None else client.post(url, body)
    # then
    assert_outcome(response, outcome, operation)
    if outcome in REFUSALS:
        assert written() == before
        assert not LogEntry.objects.exists()


def site_url(page: str, content_type_id: Any = 1, object_id: Any = 1) -> str:
    if page.startswith("app_list:"):
        return reverse("admin:app_list", args=[page.removeprefix("app_list:")])
    if page == "view_on_site":
        return reverse("admin:view_on_site", args=[content_type_id, object_id])
    if page == "catch_all":
        return reverse("admin:index") + "nowhere/"
    return reverse(f"admin:{page}")


@pytest.mark.parametrize(("operation", "principal", "outcome"), cells(SITE_TABLE))
def test_admin_site(operation: str, principal: str, outcome: str):
    # given
    method, _site, page = operation.split()
    account = AccountFactory()
    url = site_url(page, ContentType.objects.get_for_model(Account).pk, account.pk)
    client = principal_client(principal)
    # when
    response = client.generic(method, url)
    # then
    assert_outcome(response, outcome, operation)


# --- Admin actions ---


@dataclass(frozen=True)
class ActionCase:
    """An admin action on one selected row: what to select, what to post, what it does."""

    select: Callable[[], Model]
    extra: dict[str, str]
    done: Callable[[Model], bool]


def _account_past_its_warning() -> Account:
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=100, blocked=None)
    RecipientFactory(account=account, level=Level.WARNING, email="pm@example.com")
    usage_already_counted(account, 150)
    return account


def _resent(obj: Model) -> bool:
    return not Delivery.objects.filter(status=Delivery.Status.FAILED).exists()


def _gone(obj: Model) -> bool:
    return not type(obj)._default_manager.filter(pk=obj.pk).exists()


ACTION_CASES: dict[str, ActionCase] = {
    "accounts.account evaluate_thresholds_now": ActionCase(
        select=_account_past_its_warning,
        extra={},
        done=lambda account: Notification.objects.filter(account=account).exists(),
    ),
    "accounts.account send_test_notification": ActionCase(
        select=AccountFactory,
        extra={
            "apply": "1",
            "to": "qa@example.com",
            "metric": "text_tokens",
            "level": "warning",
            "language": "fr",
        },
        done=lambda account: Notification.objects.filter(account=account, is_test=True).exists(),
    ),
    "accounts.account delete_selected": ActionCase(
        select=AccountFactory, extra={"post": "yes"}, done=_gone
    ),
    "notifications.notification resend_failed_deliveries": ActionCase(
        select=lambda: failed_delivery(AccountFactory()).notification, extra={}, done=_resent
    ),
    "notifications.delivery resend_failed_deliveries": ActionCase(
        select=lambda: failed_delivery(AccountFactory()), extra={}, done=_resent
    ),
    "notifications.webhookdelivery resend_failed_deliveries": ActionCase(
        select=lambda: failed_webhook_delivery(AccountFactory()),
        extra={},
        done=lambda obj: not WebhookDelivery.objects.filter(status="failed").exists(),
    ),
    "auth.group delete_selected": ActionCase(
        select=lambda: Group.objects.create(name="Billing"), extra={"post": "yes"}, done=_gone
    ),
    "auth.user delete_selected": ActionCase(
        select=lambda: UserFactory(username="someone"), extra={"post": "yes"}, done=_gone
    ),
    "knox.authtoken delete_selected": ActionCase(
        select=lambda: AuthToken.objects.create(user=UserFactory(username="someone"))[0],
        extra={"post": "yes"},
        done=_gone,
    ),
    **{
        f"{label} delete_selected": ActionCase(
            select=lambda label=label: admin_object(label), extra={"post": "yes"}, done=_gone
        )
        for label in (
            "notifications.notification",
            "notifications.delivery",
            "notifications.webhookendpoint",
            "notifications.webhookdelivery",
            "notifications.earlytrackingevent",
            "usage.usageevent",
            "usage.usagecounter",
            "usage.extension",
            "usage.counterrepair",
            "usage.eventpurge",
            "usage.reservation",
        )
    },
}


@pytest.mark.parametrize(("operation", "principal", "outcome"), cells(ACTIONS_TABLE))
def test_admin_actions(operation: str, principal: str, outcome: str, settings):
    # given
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    label, action = operation.split()
    case = ACTION_CASES[operation]
    obj = case.select()
    client = principal_client(principal)
    url = reverse(f"admin:{label.replace('.', '_')}_changelist")
    before = written()
    # when
    response = client.post(
        url, {"action": action, ACTION_CHECKBOX_NAME: [str(obj.pk)], "index": "0", **case.extra}
    )
    # then
    if outcome == "done":
        assert response.status_code == 302, response.status_code
        assert case.done(obj)
        return
    assert not case.done(obj)
    assert written() == before
    if outcome == "none":
        assert response.status_code == 302, response.status_code
        messages = [str(m) for m in response.wsgi_request._messages]
        assert messages == ["No action selected."]
    else:
        assert_outcome(response, outcome, operation)


# --- Guards: nothing reachable without its row ---

API_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
# Served under /api/v1/ but not operations of the schema (SERVE_INCLUDE_SCHEMA is off).
API_DOCS = ("/api/v1/schema/", "/api/v1/docs/")
# Pages that take a form: each has a POST row besides its GET row.
FORM_PAGES = ("add", "change", "delete", "version", "password")
# The suffix of an admin URL name (``accounts_account_simple_history``) -> page of a row.
PAGE_OF_URL_NAME = {"simple_history": "version", "password_change": "password"}


def schema_operations() -> dict[str, set[str]]:
    """Path template (``{account}`` for the id) -> its methods, from the schema generator."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {
        path.replace("{id}", "{account}"): {method.upper() for method in operations}
        for path, operations in schema["paths"].items()
    }


def test_every_operation_of_the_api_schema_has_its_rows():
    missing = []
    for template, methods in schema_operations().items():
        for method in methods:
            missing.append(f"{method} {template}")
            if "{account}" in template:
                missing.append(f"{method} {template.replace('{account}', '{unknown}')}")
    assert [row for row in missing if row not in API_TABLE] == []


def test_every_method_of_every_api_path_has_a_row():
    missing = [
        f"{method} {template}"
        for template in schema_operations()
        for method in API_METHODS
        if f"{method} {template}" not in API_TABLE
    ]
    assert missing == []


def test_every_row_of_the_api_table_is_a_path_that_is_served():
    served = {*schema_operations(), *API_DOCS}
    stale = [
        operation
        for operation in API_TABLE
        if operation.split()[1].replace("{unknown}", "{account}") not in served
    ]
    assert stale == []


def registered_pages(model_admin: admin.ModelAdmin) -> set[str]:
    """The pages a model admin serves, named as in the rows, from its own URL patterns."""
    prefix = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_"
    pages = set()
    for pattern in model_admin.urls:
        if pattern.name is None:
            pages.add("object")  # the old change URL, which redirects
        else:
            suffix = pattern.name.removeprefix(prefix)
            pages.add(PAGE_OF_URL_NAME.get(suffix, suffix))
    return pages


def test_every_page_of_every_registered_model_has_its_rows():
    expected = set()
    for model, model_admin in admin.site._registry.items():
        for page in registered_pages(model_admin):
            expected.add(f"GET {model._meta.label_lower} {page}")
            if page in FORM_PAGES:
                expected.add(f"POST {model._meta.label_lower} {page}")
    assert sorted(expected - set(PAGES_TABLE)) == []
    assert sorted(set(PAGES_TABLE) - expected) == []


def test_every_app_of_the_admin_has_its_index_row():
    labels = {model._meta.app_label for model in admin.site._registry}
    rows = {op.split()[2].removeprefix("app_list:") for op in SITE_TABLE if "app_list:" in op}
    assert rows == labels


def test_every_action_of_every_registered_model_has_its_row():
    expected = {
        f"{model._meta.label_lower} {name}"
        for model, model_admin in admin.site._registry.items()
        for _function, name, _description in model_admin._get_base_actions()
    }
    assert sorted(expected - set(ACTIONS_TABLE)) == []
    assert sorted(set(ACTIONS_TABLE) - expected) == []
    assert set(ACTION_CASES) == set(ACTIONS_TABLE)


def url_routes(patterns: list, prefix: str = "") -> Iterator[str]:
    """Every URL pattern's full route, as ``resolve()`` names it (``ResolverMatch.route``)."""
    for pattern in patterns:
        route = str(pattern.pattern)
        if prefix:
            route = prefix + route.removeprefix("^")
        if isinstance(pattern, URLResolver):
            yield from url_routes(pattern.url_patterns, route)
        else:
            assert isinstance(pattern, URLPattern)
            yield route


def row_urls() -> Iterator[str]:
    """A URL of every row of every table (ids need not exist: only the route is read)."""
    for operation in (*API_TABLE, *OTHER_TABLE):
        yield operation.split()[1].format(
            account=uuid.UUID(int=1), unknown=uuid.UUID(int=1), reservation_id=RESERVATION_ID
        )
    for operation in SITE_TABLE:
        yield site_url(operation.split()[2])
    for operation in PAGES_TABLE:
        _method, label, page = operation.split()
        yield page_url(label, page)


def test_every_url_pattern_has_a_row():
    covered = {resolve(url).route for url in row_urls()}
    assert sorted(set(url_routes(get_resolver().url_patterns)) - covered) == []
