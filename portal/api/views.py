"""REST API: patients, specimens, images (with their consensus), analyses (create = upload images), reviews;
every write via portal.actions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from portal.accounts import second_factor
from portal.actions.cells import add_cell, reclassify_cell
from portal.actions.events import log_event
from portal.actions.patients import create_patient, create_specimen, update_patient, update_specimen
from portal.actions.signoff import sign_off
from portal.actions.specimen import log_summary_read, sign_off_specimen
from portal.actions.uploads import upload_images
from portal.analyses.cell_review import frame_reviews, specimen_differential, target_count
from portal.analyses.differential import count_progress
from portal.analyses.models import Analysis, Cell, CellAnalysis, Image, ImageReview, ImmutableError
from portal.analyses.reports import DISCLAIMER
from portal.analyses.specimen_summary import signed_review, specimen_conclusion
from portal.analyses.validation import validate_image_bytes
from portal.api.permissions import CellPermission, ImagePermission, SignOffPermission
from portal.api.schema import ERROR
from portal.api.serializers import (
    AddCellSerializer,
    AnalysisSerializer,
    CellSerializer,
    DifferentialSerializer,
    ImageSerializer,
    PatientSerializer,
    ReclassifySerializer,
    ReviewCreateSerializer,
    ReviewSerializer,
    SpecimenReviewSerializer,
    SpecimenSerializer,
    SpecimenSignOffSerializer,
    SpecimenSummarySerializer,
    StrictFields,
    UploadSerializer,
)
from portal.contract import IMAGE_MEDIA_TYPES
from portal.errors import error_body
from portal.patients.models import Patient, Specimen

__all__ = [
    "AnalysisViewSet",
    "CellViewSet",
    "ImageViewSet",
    "PatientViewSet",
    "ReviewViewSet",
    "SpecimenViewSet",
    "TokenView",
    "query_int",
]

#: the largest id a filter accepts (a 32-bit primary key)
MAX_ID = 2**31 - 1


def query_int(request: Request, name: str) -> int | None:
    """The query parameter ``name`` as a record id, None when absent; 400 naming it when it is not one
    whole number from 1 (declare it with :func:`_id_filter`, so that the schema says the same)."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1 or not values[0].isascii() or not values[0].isdigit() or not 1 <= int(values[0]) <= MAX_ID:
        raise ValidationError({name: [f"Give one id: a whole number from 1 to {MAX_ID}."]})
    return int(values[0])


def _id_filter(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, {"type": "integer", "minimum": 1, "maximum": MAX_ID}, description=f"only those of this {what}"
    )


def _query_text(request: Request, name: str, choices: Any = None) -> str | None:
    """A text query parameter, once; with ``choices``, one of them (400 naming it otherwise)."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError({name: ["Give it once."]})
    if choices is not None and values[0] not in choices:
        raise ValidationError({name: [f"One of: {', '.join(choices)}."]})
    return values[0]


class TokenSerializer(StrictFields, AuthTokenSerializer):
    """Username and password (and the authenticator app's code for the roles that need one)."""

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
    return Response(error_body(detail, code), status=http_status)


class Immutable(APIException):
    """409 ``immutable``: the record is signed off and never changes."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "immutable"


@contextmanager
def _action_refusals() -> Iterator[None]:
    """A portal.actions refusal as the API's answer: 403 (no permission), 400 ``{"detail": [...]}``
    (invalid), 409 ``immutable`` (signed off)."""
    try:
        yield
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from exc
    except DjangoValidationError as exc:
        raise ValidationError({"detail": exc.messages}) from exc
    except ImmutableError as exc:
        raise Immutable(str(exc)) from exc


class TokenView(ObtainAuthToken):
    """POST username + password (+ ``otp`` for the roles that need a second factor) -> {"token": ...}.

    Audited: issued tokens (api.token), wrong and throttled codes (user.otp_failed / otp_throttled).
    A reviewer or admin with no authenticator app enrolled gets 403 ``otp_not_enrolled``: enrolment
    shows a secret, which only the web page (after a password login) may do.
    """

    serializer_class = TokenSerializer

    @extend_schema(
        request=TokenSerializer,
        responses={200: TokenResponseSerializer, 401: ERROR, 403: ERROR, 429: ERROR},
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.serializer_class(data=request.data, context={"request": request})
        try:
            serializer.is_valid(raise_exception=True)
        except ValidationError as exc:
            # django-axes marks the request it saw (DRF's) when the account is locked out
            if getattr(request, "axes_locked_out", False) or getattr(request._request, "axes_locked_out", False):
                return _refused(
                    "Too many failed logins: this account is locked for a while.",
                    "locked_out",
                    status.HTTP_429_TOO_MANY_REQUESTS,
                )
            if "authorization" in str(exc.get_codes()):  # a well-formed request whose credentials are wrong
                response = _refused(
                    "Unable to log in with provided credentials.", "authentication_failed", status.HTTP_401_UNAUTHORIZED
                )
                response["WWW-Authenticate"] = "Token"
                return response
            raise
        user = serializer.validated_data["user"]
        if second_factor.needs_second_factor(user):
            device = second_factor.confirmed_device(user)
            code = "".join(str(serializer.validated_data.get("otp") or "").split())
            if device is None:
                log_event("user.otp_required", actor=user, obj=user, request=request, data={"stage": "api_token"})
                return _refused(
                    "Your role needs a second factor: log in on the web once to enrol an authenticator app.",
                    "otp_not_enrolled",
                    status.HTTP_403_FORBIDDEN,
                )
            if not code:
                log_event("user.otp_required", actor=user, obj=user, request=request, data={"stage": "api_token"})
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
        log_event("api.token", actor=user, obj=user, request=request)
        return Response({"token": token.key})


class _AuditedRetrieve:
    """Retrieve and list log who saw which records (list: the IDs on the page)."""

    audit_action = ""
    audit_list_action = ""

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().list(request, *args, **kwargs)  # type: ignore[misc]
        results = response.data.get("results", []) if isinstance(response.data, dict) else response.data
        log_event(
            self.audit_list_action,
            actor=request.user,
            request=request,
            object_type=self.audit_list_action.split(".")[0],
            data={"query": dict(request.query_params.items()), "ids": [r["id"] for r in results]},
        )
        return response

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        obj = self.get_object()  # type: ignore[attr-defined]
        log_event(self.audit_action, actor=request.user, obj=obj, request=request)
        return Response(self.get_serializer(obj).data)  # type: ignore[attr-defined]


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("q", str, description="MRN or name contains (any case)")])
)
class PatientViewSet(
    _AuditedRetrieve, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    serializer_class = PatientSerializer
    audit_action = "patient.view"
    audit_list_action = "patient.search"

    def get_queryset(self) -> QuerySet[Patient]:
        qs = Patient.objects.order_by("name", "mrn")
        query = (_query_text(self.request, "q") or "").strip() if self.action == "list" else ""
        if query:
            qs = qs.filter(Q(mrn__icontains=query) | Q(name__icontains=query))
        return qs

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = create_patient(self.request.user, dict(serializer.validated_data), request=self.request)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = update_patient(
            self.request.user, serializer.instance, dict(serializer.validated_data), request=self.request
        )


@extend_schema_view(list=extend_schema(parameters=[_id_filter("patient", "patient")]))
class SpecimenViewSet(
    _AuditedRetrieve, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    serializer_class = SpecimenSerializer
    audit_action = "specimen.view"
    audit_list_action = "specimen.list"

    def get_queryset(self) -> QuerySet[Specimen]:
        qs = Specimen.objects.select_related("patient").order_by("-collected_at", "-id")
        patient = query_int(self.request, "patient") if self.action == "list" else None
        if patient is not None:
            qs = qs.filter(patient_id=patient)
        return qs

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        patient = data.pop("patient")
        serializer.instance = create_specimen(self.request.user, patient, data, request=self.request)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, description="The specimen's results as a FHIR R4B Bundle.")
    @action(detail=True, methods=["get"], url_path="fhir")
    def fhir(self, request: Request, pk: str | None = None) -> Response:
        if not request.user.has_perm("analyses.export_analyses"):
            raise PermissionDenied("exporting needs analyses.export_analyses")
        from portal.analyses.fhir import specimen_bundle

        specimen = self.get_object()
        bundle = specimen_bundle(specimen)
        log_event(
            "export.fhir", actor=request.user, obj=specimen, request=request, data={"entries": len(bundle["entry"])}
        )
        return Response(bundle)

    @extend_schema(
        responses={200: DifferentialSerializer},
        description="The specimen's white-cell differential, per final type (a technologist's reclassification, "
        "else the cell model's label; abstentions count as unclassified white cells; cells added by hand "
        "included): percentages of the white cells only with their 95% Wilson intervals, blasts against the "
        "acute-leukaemia line, nucleated red cells per 100 white cells, platelets as a count, artefacts "
        "excluded, and the count against the lab's target.",
    )
    @action(detail=True, methods=["get"], url_path="differential")
    def differential(self, request: Request, pk: str | None = None) -> Response:
        if not request.user.has_perm("analyses.view_cell"):
            raise PermissionDenied("the differential needs analyses.view_cell")
        specimen = self.get_object()
        diff = specimen_differential(specimen)
        images = list(specimen.images.all())
        progress = count_progress(diff.white_cells, target_count())
        body = {
            "specimen": specimen.pk,
            **diff.as_dict(),
            "frames": CellAnalysis.objects.filter(image__in=images, status=CellAnalysis.Status.DONE).count(),
            "signed_frames": len(frame_reviews(images)),
            "target_count": progress.target,
            "target_reached": progress.reached,
        }
        log_event("specimen.differential", actor=request.user, obj=specimen, request=request, data=body)
        return Response(DifferentialSerializer(body).data)

    @extend_schema(
        responses={200: SpecimenSummarySerializer},
        description="The specimen's one conclusion: each frame by consensus (its signed label where signed), the "
        "referred frames, the pooled differential with the blast percentage, the agreement checks between "
        "frames and cells (a frame called ALL without blasts; at least 2 blasts making 20% or more of the white "
        "cells of the frames called Benign, pooled: refer; fewer blasts there are a note), every reason to refer, "
        "the notes, "
        "and the sign-off once signed. Decision support only.",
    )
    @action(detail=True, methods=["get"], url_path="summary")
    def summary(self, request: Request, pk: str | None = None) -> Response:
        if not (request.user.has_perm("analyses.view_cell") and request.user.has_perm("analyses.view_analysis")):
            raise PermissionDenied("the summary needs analyses.view_analysis and analyses.view_cell")
        specimen = self.get_object()
        conclusion = specimen_conclusion(specimen)
        review = signed_review(specimen)
        body = {
            "specimen": specimen.pk,
            **conclusion.as_dict(),
            "signed_off": review,
            "notice": DISCLAIMER,
        }
        log_summary_read(request.user, specimen, conclusion, request)
        return Response(SpecimenSummarySerializer(body).data)

    @extend_schema(
        request=SpecimenSignOffSerializer,
        responses={201: SpecimenReviewSerializer, 409: ERROR},
        description="The reviewer signs the specimen off once, after every frame with a result is signed off: "
        "agree with the conclusion or set its class, always with an interpretive comment. Needs "
        "analyses.sign_off_analysis; 409 once signed (a sign-off never changes).",
    )
    @action(detail=True, methods=["post"], url_path="sign-off")
    def sign_off(self, request: Request, pk: str | None = None) -> Response:
        if not request.user.has_perm("analyses.sign_off_analysis"):
            raise PermissionDenied("signing off needs analyses.sign_off_analysis")
        specimen = self.get_object()
        serializer = SpecimenSignOffSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        with _action_refusals():
            review = sign_off_specimen(
                request.user,
                specimen,
                decision=data["decision"],
                final_label=data.get("final_label"),
                comment=data["comment"],
                request=request,
            )
        return Response(SpecimenReviewSerializer(review).data, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        data.pop("patient", None)
        serializer.instance = update_specimen(self.request.user, serializer.instance, data, request=self.request)


@extend_schema_view(list=extend_schema(parameters=[_id_filter("specimen", "specimen")]))
class ImageViewSet(_AuditedRetrieve, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """List/retrieve images with their analyses and their consensus (what the portal's image page shows);
    ``?specimen=`` filters. Uploading is POST /api/analyses/."""

    serializer_class = ImageSerializer
    permission_classes = [ImagePermission]
    audit_action = "image.view"
    audit_list_action = "image.list"

    def get_queryset(self) -> QuerySet[Image]:
        qs = Image.objects.prefetch_related("analyses").order_by("-uploaded_at", "-id")
        if self.action != "list":
            return qs
        specimen = query_int(self.request, "specimen")
        return qs if specimen is None else qs.filter(specimen_id=specimen)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            _id_filter("specimen", "specimen"),
            _id_filter("image", "image"),
            OpenApiParameter("status", str, enum=Analysis.Status.values, description="only those in this state"),
        ]
    )
)
class AnalysisViewSet(_AuditedRetrieve, mixins.ListModelMixin, viewsets.GenericViewSet):
    """List/retrieve analyses; POST (multipart) uploads images and queues one analysis per image and model."""

    serializer_class = AnalysisSerializer
    audit_action = "analysis.view"
    audit_list_action = "analysis.list"
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[Analysis]:
        qs = Analysis.objects.select_related("image__review", "review").order_by("-created_at", "-id")
        if self.action != "list":
            return qs
        for param, field in (("specimen", "image__specimen_id"), ("image", "image_id")):
            value = query_int(self.request, param)
            if value is not None:
                qs = qs.filter(**{field: value})
        status_ = _query_text(self.request, "status", Analysis.Status.values)
        if status_:
            qs = qs.filter(status=status_)
        return qs

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        responses={201: ImageSerializer(many=True)},
        description=f"Upload images, each a file part ({', '.join(IMAGE_MEDIA_TYPES)}) the decoder reads, "
        "each side at least PORTAL_MIN_IMAGE_SIDE px (64 by default): one analysis per image and model is queued. "
        "A file that is not such an image answers 400 naming it under images (a schema cannot say what a "
        "readable image is).",
    )
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
        images = upload_images(
            request.user, upload.validated_data["specimen"], validated, upload.validated_data["model"], request=request
        )
        for image in images:
            image.refresh_from_db()
        return Response(ImageSerializer(images, many=True).data, status=status.HTTP_201_CREATED)


class ReviewViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Sign-offs, one per image: agree with the consensus of its models or reclassify it. Creating one needs
    analyses.sign_off_analysis and every model of the image finished; reviews never change (409 on a second)."""

    permission_classes = [SignOffPermission]
    parser_classes = [JSONParser]  # final_label may be null, which a form cannot say
    queryset = ImageReview.objects.order_by("-signed_at")

    def get_serializer_class(self) -> Any:
        return ReviewCreateSerializer if self.action == "create" else ReviewSerializer

    @extend_schema(request=ReviewCreateSerializer, responses={201: ReviewSerializer, 409: ERROR})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ReviewCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        with _action_refusals():
            review = sign_off(
                request.user,
                data["image"],
                decision=data["decision"],
                final_label=data.get("final_label"),
                comment=data.get("comment", ""),
                request=request,
            )
        return Response(ReviewSerializer(review).data, status=status.HTTP_201_CREATED)


@extend_schema_view(list=extend_schema(parameters=[_id_filter("specimen", "specimen"), _id_filter("image", "image")]))
class CellViewSet(_AuditedRetrieve, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Cells the cell model found (filter by ``image`` or ``specimen``); POST ``reclassify`` sets a cell's type;
    POST adds a cell the model missed."""

    serializer_class = CellSerializer
    permission_classes = [CellPermission]
    audit_action = "cell.view"
    audit_list_action = "cell.list"

    def get_queryset(self) -> QuerySet[Cell]:
        qs = Cell.objects.select_related("image", "cell_analysis", "reviewed_by").order_by("image_id", "index")
        if self.action != "list":
            return qs
        for param, field in (("specimen", "image__specimen_id"), ("image", "image_id")):
            value = query_int(self.request, param)
            if value is not None:
                qs = qs.filter(**{field: value})
        return qs

    @extend_schema(
        request=AddCellSerializer,
        responses={201: CellSerializer, 409: ERROR},
        description="Add a cell the model missed: its frame, its box [x0, y0, x1, y1] in image pixels and its type. "
        "It counts in the differential, marked manual. 400 before the frame's cell analysis finished, for a box "
        "outside the image, too small, or over a cell already counted; 409 once the frame is signed off.",
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = AddCellSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        with _action_refusals():
            cell = add_cell(request.user, data["image"], data["box"], data["label"], request=request)
        return Response(CellSerializer(cell).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ReclassifySerializer, responses={200: CellSerializer, 409: ERROR})
    @action(detail=True, methods=["post"], url_path="reclassify")
    def reclassify(self, request: Request, pk: str | None = None) -> Response:
        """Set the cell's type, or 'artefact' (not a cell), audited old -> new; 409 once its frame is signed off."""
        cell = self.get_object()
        serializer = ReclassifySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with _action_refusals():
            cell = reclassify_cell(request.user, cell, serializer.validated_data["label"], request=request)
        return Response(CellSerializer(cell).data)
