"""``GET /api/models/``: each model's versions, the default, its card and its gate report (.registry)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.audit.log import record
from portal.models_registry.registry import models_overview

__all__ = ["ModelsView"]


class GateReportSerializer(serializers.Serializer):  # type: ignore[type-arg]
    passed = serializers.BooleanField()
    report = serializers.CharField()
    finished = serializers.CharField(allow_null=True)
    served_version = serializers.CharField(allow_null=True)
    criteria = serializers.ListField(child=serializers.DictField())
    candidate_metrics = serializers.DictField()


class ModelVersionSerializer(serializers.Serializer):  # type: ignore[type-arg]
    version = serializers.CharField()
    shipped = serializers.BooleanField()
    default = serializers.BooleanField()
    loaded = serializers.BooleanField(allow_null=True, help_text="TorchServe has it loaded (null: not running)")
    card = serializers.DictField(allow_null=True)
    gate = GateReportSerializer(allow_null=True)


class ServedModelSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["frames", "cells"])
    default_version = serializers.CharField()
    previous_version = serializers.CharField(allow_null=True, help_text="what a rollback returns to")
    loaded_versions = serializers.ListField(child=serializers.CharField(), allow_null=True)
    versions = ModelVersionSerializer(many=True)
    history = serializers.ListField(child=serializers.DictField(), help_text="promotions and rollbacks")


class ModelsView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses={200: ServedModelSerializer(many=True)},
        description="Each model the portal uses: its versions (shipped, candidates), the default TorchServe answers "
        "with, the versions TorchServe has loaded, each version's card summary and gate report, and the promotion "
        "history.",
    )
    def get(self, request: Request) -> Response:
        record("model.list", request=request)
        return Response(ServedModelSerializer(models_overview(), many=True).data)
