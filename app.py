#!/usr/bin/env python3
"""The Covenant CDK app: one regional API stack per region of the cdk.json region table."""

from __future__ import annotations

import aws_cdk as cdk

from stacks.regional_api import RegionalApiStack
from stacks.settings import AppSettings


def build_app(app: cdk.App | None = None) -> cdk.App:
    app = app or cdk.App()
    settings = AppSettings.from_node(app.node)
    for region in settings.regions:
        RegionalApiStack(
            app,
            f"Covenant-{region.code}-Api",
            region=region,
            settings=settings,
            env=cdk.Environment(account=settings.account, region=region.aws_region),
            description=f"Covenant regional API ({region.code})",
        )
    return app


if __name__ == "__main__":
    build_app().synth()
