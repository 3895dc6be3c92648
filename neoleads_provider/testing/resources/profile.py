# mypy: disable-error-code="misc"
# The mixin's methods name their real receiver, SandboxState, as their self type, so that calls into the
# other mixins are checked; mypy reports such a self type as "not a supertype of its class" [misc].
"""``GET /api/v1/profile``: the token's user, with its accounts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from neoleads_provider.testing.models import User
    from neoleads_provider.testing.routing import RouteContext, SandboxRouter
    from neoleads_provider.testing.state import SandboxState


class ProfileMixin:
    """The profile of :class:`~neoleads_provider.testing.state.SandboxState`."""

    def render_profile(self: SandboxState, user: User) -> dict[str, Any]:
        """Render ``GET /api/v1/profile``: the flat user, with its accounts, echoing the access token."""
        with self.lock:
            account_id = next(iter(user.roles))
            accounts = [
                {
                    "id": account_id_,
                    "name": self.accounts[account_id_].name,
                    "status": "active",
                    "active_at": None,
                    "role": role,
                    "permissions": [role],
                    "availability": "online",
                    "availability_status": "online",
                    "auto_offline": True,
                    "custom_role_id": None,
                    "custom_role": None,
                    "onboarding_step": None,
                }
                for account_id_, role in user.roles.items()
                if account_id_ in self.accounts
            ]
            return {
                "access_token": user.access_token,
                "account_id": account_id,
                "available_name": user.name,
                "avatar_url": "",
                "confirmed": True,
                "display_name": None,
                "message_signature": None,
                "email": user.email,
                "id": user.id,
                "inviter_id": None,
                "name": user.name,
                "provider": "email",
                "pubsub_token": user.pubsub_token,
                "custom_attributes": {},
                "role": user.roles[account_id],
                "ui_settings": {},
                "uid": user.email,
                "type": "user",
                "accounts": accounts,
            }


def router(context: RouteContext) -> SandboxRouter:
    """``GET /api/v1/profile``."""
    state = context.state
    api = context.router(context.API_PREFIX)

    @api.handler("GET", "/profile")
    async def profile(request: Request) -> Response:
        """The token's user, flat, with its accounts."""
        return context.json(state.render_profile(state.authenticate(context.token(request))))

    return api
