"""The Cognito user pool, in the primary region: groups, password policy, the mobile app client.

Every regional API verifies tokens of this one pool (issuer and client id reach the other
regions as CDK cross-region references, which CloudFormation resolves at deploy time from SSM
parameters: nothing is looked up at synth).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cognito as cognito
from constructs import Construct

from stacks.nag import acknowledge
from stacks.settings import AppSettings

ROLES = {
    "admin": "Administrators: write countries and projects, manage roles",
    "editor": "Editors: write projects",
    "viewer": "Viewers: read (every new account)",
}


class UserPool(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: AppSettings) -> None:
        super().__init__(scope, construct_id)
        auth = settings.auth
        threat_protection = auth.threat_protection.upper()
        self.pool = cognito.UserPool(
            self,
            "Pool",
            user_pool_name=auth.user_pool_name,
            # Accounts are created by POST /auth/register through the mobile function, which
            # alone decides the role (viewer); nobody signs up around it.
            self_sign_up_enabled=False,
            sign_in_aliases=cognito.SignInAliases(email=True),
            auto_verify=cognito.AutoVerifiedAttrs(email=True),
            standard_attributes=cognito.StandardAttributes(
                email=cognito.StandardAttribute(required=True, mutable=True),
                fullname=cognito.StandardAttribute(required=True, mutable=True),
            ),
            custom_attributes={
                "country_code": cognito.StringAttribute(min_len=3, max_len=3, mutable=True)
            },
            password_policy=cognito.PasswordPolicy(
                min_length=12,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=Duration.days(3),
            ),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            mfa=cognito.Mfa.OPTIONAL,
            mfa_second_factor=cognito.MfaSecondFactor(sms=False, otp=True),
            feature_plan=(
                cognito.FeaturePlan.ESSENTIALS
                if threat_protection == "OFF"
                else cognito.FeaturePlan.PLUS
            ),
            standard_threat_protection_mode=(
                None
                if threat_protection == "OFF"
                else cognito.StandardThreatProtectionMode[threat_protection]
            ),
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        for name, description in ROLES.items():
            cognito.CfnUserPoolGroup(
                self,
                f"Group{name.title()}",
                user_pool_id=self.pool.user_pool_id,
                group_name=name,
                description=description,
            )
        self.client = self.pool.add_client(
            "MobileClient",
            user_pool_client_name="covenant-mobile",
            # Confidential: sign-in goes through the mobile function, which holds the secret
            # (read from Cognito at run time, never in a template). Cognito takes the caller's
            # context data (address, device fingerprint) for threat protection only from a
            # client with a secret and this flag; without it every sign-in would seem to come
            # from the region's NAT addresses.
            generate_secret=True,
            enable_propagate_additional_user_context_data=True,
            # The flows the auth endpoints use: /auth/login and /auth/refresh.
            auth_flows=cognito.AuthFlow(user_password=True),
            prevent_user_existence_errors=True,
            enable_token_revocation=True,
            access_token_validity=Duration.minutes(auth.access_token_minutes),
            id_token_validity=Duration.minutes(auth.access_token_minutes),
            refresh_token_validity=Duration.days(auth.refresh_token_days),
            read_attributes=cognito.ClientAttributes()
            .with_standard_attributes(email=True, email_verified=True, fullname=True)
            .with_custom_attributes("country_code"),
            write_attributes=cognito.ClientAttributes().with_standard_attributes(fullname=True),
            disable_o_auth=True,
        )
        acknowledge(
            self.pool,
            "AwsSolutions-COG2",
            "MFA is optional (TOTP): the app signs in with email and password, then "
            "unlocks stored tokens biometrically; threat protection adds adaptive "
            "challenges and blocks compromised credentials. Requiring MFA is one line.",
        )


class AuthStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, settings: AppSettings, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.user_pool = UserPool(self, "Users", settings=settings)
        self.region_name = settings.primary.aws_region

    @property
    def issuer(self) -> str:
        return (
            f"https://cognito-idp.{self.region_name}.amazonaws.com/"
            f"{self.user_pool.pool.user_pool_id}"
        )
