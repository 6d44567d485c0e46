"""Serializers shared by the apps: the one error shape, for the OpenAPI schema (`apps/core/http_errors.py`
renders it)."""

from __future__ import annotations

from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField(allow_null=True)


class ErrorResponseSerializer(serializers.Serializer):
    """The one error shape of the API."""

    error = ErrorDetailSerializer()
