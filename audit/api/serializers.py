from rest_framework import serializers

from audit.models import AuditEvent, Outcome


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.SerializerMethodField()
    target = serializers.SerializerMethodField()

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "seq",
            "occurred_at",
            "organization",
            "actor",
            "action",
            "target",
            "outcome",
            "ip",
            "user_agent",
            "request_id",
            "details",
            "hash",
        ]

    def get_actor(self, event) -> dict:
        return {
            "type": event.actor_type,
            "user_id": event.actor_user_id,
            "label": event.actor_label,
            "api_key_id": event.actor_api_key_id,
            "api_key_prefix": event.actor_api_key_prefix,
        }

    def get_target(self, event) -> dict:
        return {"type": event.target_type, "id": event.target_id}


class AuditEventFilterSerializer(serializers.Serializer):
    """Query parameters of the event list and the export."""

    actor = serializers.IntegerField(required=False, min_value=1, help_text="User id of the actor.")
    actor_type = serializers.ChoiceField(choices=["user", "api_key", "system", "anonymous"], required=False)
    action = serializers.RegexField(
        r"^[a-z0-9_.]+\*?$",
        max_length=100,
        required=False,
        help_text="An action, or a prefix ending in * (tenants.api_key.*).",
    )
    target_type = serializers.CharField(max_length=100, required=False)
    target_id = serializers.CharField(max_length=64, required=False)
    outcome = serializers.ChoiceField(choices=Outcome.choices, required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)

    def validate(self, attrs):
        if attrs.get("since") and attrs.get("until") and attrs["since"] > attrs["until"]:
            raise serializers.ValidationError({"until": "Must not be before since."})
        return attrs

    def apply(self, events):
        data = self.validated_data
        if "actor" in data:
            events = events.filter(actor_user_id=data["actor"])
        if "actor_type" in data:
            events = events.filter(actor_type=data["actor_type"])
        if "action" in data:
            action = data["action"]
            events = (
                events.filter(action__startswith=action[:-1]) if action.endswith("*") else events.filter(action=action)
            )
        if "target_type" in data:
            events = events.filter(target_type=data["target_type"])
        if "target_id" in data:
            events = events.filter(target_id=data["target_id"])
        if "outcome" in data:
            events = events.filter(outcome=data["outcome"])
        if "since" in data:
            events = events.filter(occurred_at__gte=data["since"])
        if "until" in data:
            events = events.filter(occurred_at__lt=data["until"])
        return events


class ExportFilterSerializer(AuditEventFilterSerializer):
    format = serializers.ChoiceField(choices=["jsonl", "csv"], default="jsonl")


class VerificationSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField()
    first_break = serializers.DictField(allow_null=True)
    pending = serializers.IntegerField(help_text="Events written but not chained yet (the sequencer chains them).")
    oldest_pending_seconds = serializers.FloatField(
        allow_null=True, help_text="Age of the oldest event still waiting to be chained."
    )
