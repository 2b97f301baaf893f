"""REST API: patients, specimens, images (with their consensus), analyses (create = upload images), reviews;
every write via portal.actions."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from portal import actions
from portal.accounts import second_factor
from portal.analyses.cell_review import frame_reviews, specimen_differential
from portal.analyses.models import Analysis, Cell, CellAnalysis, Image, ImageReview, ImmutableError
from portal.analyses.validation import validate_image_bytes
from portal.api.permissions import CellPermission, ImagePermission, SignOffPermission
from portal.api.serializers import (
    AnalysisSerializer,
    CellSerializer,
    DifferentialSerializer,
    ImageSerializer,
    PatientSerializer,
    ReclassifySerializer,
    ReviewCreateSerializer,
    ReviewSerializer,
    SpecimenSerializer,
    UploadSerializer,
)
from portal.patients.models import Patient, Specimen

__all__ = [
    "AnalysisViewSet",
    "CellViewSet",
    "ImageViewSet",
    "PatientViewSet",
    "ReviewViewSet",
    "SpecimenViewSet",
    "TokenView",
]


class TokenSerializer(AuthTokenSerializer):
    otp = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=12,
        write_only=True,
        help_text="The code from the authenticator app: required for reviewers, admins and superusers "
        "(enrol the app first on the web: log in once at /accounts/login/).",
    )


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField(read_only=True)


def _refused(detail: str, code: str, http_status: int) -> Response:
    return Response({"detail": detail, "code": code}, status=http_status)


class TokenView(ObtainAuthToken):
    """POST username + password (+ ``otp`` for the roles that need a second factor) -> {"token": ...}.

    Audited: issued tokens (api.token), wrong and throttled codes (user.otp_failed / otp_throttled).
    A reviewer or admin with no authenticator app enrolled gets 403 ``otp_not_enrolled``: enrolment
    shows a secret, which only the web page (after a password login) may do.
    """

    serializer_class = TokenSerializer

    @extend_schema(
        request=TokenSerializer,
        responses={
            200: TokenResponseSerializer,
            400: OpenApiTypes.OBJECT,
            403: OpenApiTypes.OBJECT,
            429: OpenApiTypes.OBJECT,
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.serializer_class(data=request.data, context={"request": request})
        try:
            serializer.is_valid(raise_exception=True)
        except ValidationError:
            # django-axes marks the request it saw (DRF's) when the account is locked out
            if getattr(request, "axes_locked_out", False) or getattr(request._request, "axes_locked_out", False):
                return _refused(
                    "Too many failed logins: this account is locked for a while.",
                    "locked_out",
                    status.HTTP_429_TOO_MANY_REQUESTS,
                )
            raise
        user = serializer.validated_data["user"]
        if second_factor.needs_second_factor(user):
            device = second_factor.confirmed_device(user)
            code = "".join(str(serializer.validated_data.get("otp") or "").split())
            if device is None:
                actions.log_event(
                    "user.otp_required", actor=user, obj=user, request=request, data={"stage": "api_token"}
                )
                return _refused(
                    "Your role needs a second factor: log in on the web once to enrol an authenticator app.",
                    "otp_not_enrolled",
                    status.HTTP_403_FORBIDDEN,
                )
            if not code:
                actions.log_event(
                    "user.otp_required", actor=user, obj=user, request=request, data={"stage": "api_token"}
                )
                raise ValidationError(
                    {"otp": ["Your role needs the code from your authenticator app."]}, code="otp_required"
                )
            result = second_factor.check_code(device, code, request=request, stage="api_token")
            if result is second_factor.CodeResult.THROTTLED:
                return _refused(
                    "Too many wrong codes: wait a few seconds before the next try.",
                    "otp_throttled",
                    status.HTTP_429_TOO_MANY_REQUESTS,
                )
            if result is not second_factor.CodeResult.OK:
                raise ValidationError({"otp": ["That code is not right (or was used already)."]}, code="otp_invalid")
        token, _ = Token.objects.get_or_create(user=user)
        actions.log_event("api.token", actor=user, obj=user, request=request)
        return Response({"token": token.key})


class _AuditedRetrieve:
    """Retrieve and list log who saw which records (list: the IDs on the page)."""

    audit_action = ""
    audit_list_action = ""

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().list(request, *args, **kwargs)  # type: ignore[misc]
        results = response.data.get("results", []) if isinstance(response.data, dict) else response.data
        actions.log_event(
            self.audit_list_action,
            actor=request.user,
            request=request,
            object_type=self.audit_list_action.split(".")[0],
            data={"query": dict(request.query_params.items()), "ids": [r["id"] for r in results]},
        )
        return response

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        obj = self.get_object()  # type: ignore[attr-defined]
        actions.log_event(self.audit_action, actor=request.user, obj=obj, request=request)
        return Response(self.get_serializer(obj).data)  # type: ignore[attr-defined]


class PatientViewSet(
    _AuditedRetrieve, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    serializer_class = PatientSerializer
    audit_action = "patient.view"
    audit_list_action = "patient.search"

    def get_queryset(self) -> QuerySet[Patient]:
        qs = Patient.objects.order_by("name", "mrn")
        query = self.request.query_params.get("q", "").strip()
        if query:
            qs = qs.filter(Q(mrn__icontains=query) | Q(name__icontains=query))
        return qs

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = actions.create_patient(
            self.request.user, dict(serializer.validated_data), request=self.request
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = actions.update_patient(
            self.request.user, serializer.instance, dict(serializer.validated_data), request=self.request
        )


class SpecimenViewSet(
    _AuditedRetrieve, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    serializer_class = SpecimenSerializer
    audit_action = "specimen.view"
    audit_list_action = "specimen.list"

    def get_queryset(self) -> QuerySet[Specimen]:
        qs = Specimen.objects.select_related("patient").order_by("-collected_at", "-id")
        patient = self.request.query_params.get("patient")
        if patient and patient.isdigit():
            qs = qs.filter(patient_id=int(patient))
        return qs

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        patient = data.pop("patient")
        serializer.instance = actions.create_specimen(self.request.user, patient, data, request=self.request)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, description="The specimen's results as a FHIR R4B Bundle.")
    @action(detail=True, methods=["get"], url_path="fhir")
    def fhir(self, request: Request, pk: str | None = None) -> Response:
        if not request.user.has_perm("analyses.export_analyses"):
            raise PermissionDenied("exporting needs analyses.export_analyses")
        from portal.analyses.fhir import specimen_bundle

        specimen = self.get_object()
        bundle = specimen_bundle(specimen)
        actions.log_event(
            "export.fhir", actor=request.user, obj=specimen, request=request, data={"entries": len(bundle["entry"])}
        )
        return Response(bundle)

    @extend_schema(
        responses={200: DifferentialSerializer},
        description="The specimen's white-cell differential, per final type (a technologist's reclassification, "
        "else the cell model's label; abstentions count as unclassified white cells): percentages of the white "
        "cells only, nucleated red cells per 100 white cells, platelets as a count, artefacts excluded.",
    )
    @action(detail=True, methods=["get"], url_path="differential")
    def differential(self, request: Request, pk: str | None = None) -> Response:
        if not request.user.has_perm("analyses.view_cell"):
            raise PermissionDenied("the differential needs analyses.view_cell")
        specimen = self.get_object()
        diff = specimen_differential(specimen)
        images = list(specimen.images.all())
        body = {
            "specimen": specimen.pk,
            **diff.as_dict(),
            "frames": CellAnalysis.objects.filter(image__in=images, status=CellAnalysis.Status.DONE).count(),
            "signed_frames": len(frame_reviews(images)),
        }
        actions.log_event("specimen.differential", actor=request.user, obj=specimen, request=request, data=body)
        return Response(DifferentialSerializer(body).data)

    def perform_update(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        data.pop("patient", None)
        serializer.instance = actions.update_specimen(
            self.request.user, serializer.instance, data, request=self.request
        )


class ImageViewSet(_AuditedRetrieve, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """List/retrieve images with their analyses and their consensus (what the portal's image page shows);
    ``?specimen=`` filters. Uploading is POST /api/analyses/."""

    serializer_class = ImageSerializer
    permission_classes = [ImagePermission]
    audit_action = "image.view"
    audit_list_action = "image.list"

    def get_queryset(self) -> QuerySet[Image]:
        qs = Image.objects.prefetch_related("analyses").order_by("-uploaded_at", "-id")
        specimen = self.request.query_params.get("specimen")
        if specimen and specimen.isdigit():
            qs = qs.filter(specimen_id=int(specimen))
        return qs


class AnalysisViewSet(_AuditedRetrieve, mixins.ListModelMixin, viewsets.GenericViewSet):
    """List/retrieve analyses; POST (multipart) uploads images and queues one analysis per image and model."""

    serializer_class = AnalysisSerializer
    audit_action = "analysis.view"
    audit_list_action = "analysis.list"
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[Analysis]:
        qs = Analysis.objects.select_related("image__review", "review").order_by("-created_at", "-id")
        for param, field in (("specimen", "image__specimen_id"), ("image", "image_id")):
            value = self.request.query_params.get(param)
            if value and value.isdigit():
                qs = qs.filter(**{field: int(value)})
        status_ = self.request.query_params.get("status")
        if status_:
            qs = qs.filter(status=status_)
        return qs

    @extend_schema(request={"multipart/form-data": UploadSerializer}, responses={201: ImageSerializer(many=True)})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not request.user.has_perm("analyses.add_image"):
            raise PermissionDenied("uploading needs analyses.add_image")
        upload = UploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        files = request.FILES.getlist("images")
        validated, errors = [], []
        for f in files:
            try:
                validated.append(validate_image_bytes(f.name or "upload", f.read()))
            except DjangoValidationError as exc:
                errors.extend(exc.messages)
        if errors:
            raise ValidationError({"images": errors})
        images = actions.upload_images(
            request.user, upload.validated_data["specimen"], validated, upload.validated_data["model"], request=request
        )
        for image in images:
            image.refresh_from_db()
        return Response(ImageSerializer(images, many=True).data, status=status.HTTP_201_CREATED)


class ReviewViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Sign-offs, one per image: agree with the consensus of its models or reclassify it. Creating one needs
    analyses.sign_off_analysis and every model of the image finished; reviews never change (409 on a second)."""

    permission_classes = [SignOffPermission]
    queryset = ImageReview.objects.order_by("-signed_at")

    def get_serializer_class(self) -> Any:
        return ReviewCreateSerializer if self.action == "create" else ReviewSerializer

    @extend_schema(request=ReviewCreateSerializer, responses={201: ReviewSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ReviewCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            review = actions.sign_off(
                request.user,
                data["image"],
                decision=data["decision"],
                final_label=data.get("final_label"),
                comment=data.get("comment", ""),
                request=request,
            )
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from exc
        except DjangoValidationError as exc:
            raise ValidationError({"detail": exc.messages}) from exc
        except ImmutableError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(ReviewSerializer(review).data, status=status.HTTP_201_CREATED)


class CellViewSet(_AuditedRetrieve, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Cells the cell model found (filter by ``image`` or ``specimen``); POST ``reclassify`` sets a cell's type."""

    serializer_class = CellSerializer
    permission_classes = [CellPermission]
    audit_action = "cell.view"
    audit_list_action = "cell.list"

    def get_queryset(self) -> QuerySet[Cell]:
        qs = Cell.objects.select_related("image", "cell_analysis", "reviewed_by").order_by("image_id", "index")
        for param, field in (("specimen", "image__specimen_id"), ("image", "image_id")):
            value = self.request.query_params.get(param)
            if value and value.isdigit():
                qs = qs.filter(**{field: int(value)})
        return qs

    @extend_schema(request=ReclassifySerializer, responses={200: CellSerializer})
    @action(detail=True, methods=["post"], url_path="reclassify")
    def reclassify(self, request: Request, pk: str | None = None) -> Response:
        """Set the cell's type, or 'artefact' (not a cell), audited old -> new; 409 once its frame is signed off."""
        cell = self.get_object()
        serializer = ReclassifySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            cell = actions.reclassify_cell(request.user, cell, serializer.validated_data["label"], request=request)
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from exc
        except DjangoValidationError as exc:
            raise ValidationError({"detail": exc.messages}) from exc
        except ImmutableError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(CellSerializer(cell).data)
