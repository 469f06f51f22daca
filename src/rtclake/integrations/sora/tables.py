"""The typed lake tables of Sora data.

Every table keeps the line's envelope and typed columns for what people chart; the keys
no column takes stay in ``extra`` (nested: an ``rtc_data`` key without a column stays at
``extra.rtc_data.KEY``), so the original object can always be rebuilt.
"""

from __future__ import annotations

from rtclake.tables import Column, Table, columns

# The envelope Sora writes on every rtc_stats line (and sends in stats webhooks).
_STATS_ENVELOPE = (
    Column("report_id", "id", ("id",)),
    Column("label", "string", ("label",)),
    Column("version", "string", ("version",)),
    Column("node_name", "string", ("node_name",)),
    Column("channel_id", "id", ("channel_id",)),
    Column("session_id", "id", ("session_id",)),
    Column("connection_id", "id", ("connection_id",)),
    Column("client_id", "id", ("client_id",)),
    Column("bundle_id", "id", ("bundle_id",)),
    Column("group_id", "id", ("group_id",)),
    Column("role", "string", ("role",)),
    Column("spotlight", "bool", ("spotlight",)),
    Column("simulcast", "bool", ("simulcast",)),
    Column("multistream", "bool", ("multistream",)),
    Column("log_written", "bool", ("log_written",)),
)

RTC_STATS = Table(
    name="rtc_stats",
    kind="rtc_stats",
    description="One row per RTCStats object of a client's getStats report (Sora).",
    identity=("connection_id", "stats_id", "rtc_timestamp"),
    sparse_extra=True,
    columns=(
        *_STATS_ENVELOPE,
        Column("stats_id", "id", ("rtc_id", "rtc_data.id")),
        Column("stats_type", "string", ("rtc_type", "rtc_data.type")),
        Column("rtc_timestamp", "time", ("rtc_timestamp", "rtc_data.timestamp")),
        Column("media_kind", "string", ("rtc_data.kind",)),
        Column("channel_label", "string", ("rtc_data.label",)),
        *columns(
            "string",
            "rtc_data.",
            "mediaType mid rid trackIdentifier transportId codecId mediaSourceId remoteId"
            " localId qualityLimitationReason mimeType sdpFmtpLine encoderImplementation"
            " decoderImplementation scalabilityMode state candidateType protocol"
            " relayProtocol networkType address localCandidateId remoteCandidateId"
            " selectedCandidatePairId dtlsState iceState iceRole dtlsRole"
            " srtpCipher tlsVersion foundation usernameFragment url relatedAddress tcpType"
            " fingerprint fingerprintAlgorithm base64Certificate issuerCertificateId"
            " localCertificateId remoteCertificateId iceLocalUsernameFragment"
            " rtcpTransportStatsId playoutId",
        ),
        *columns(
            "int",
            "rtc_data.",
            "ssrc rtxSsrc bytesSent bytesReceived packetsSent packetsReceived packetsLost"
            " packetsDiscarded headerBytesSent headerBytesReceived retransmittedBytesSent"
            " retransmittedPacketsSent frameWidth frameHeight framesEncoded framesDecoded"
            " framesDropped framesSent framesReceived keyFramesEncoded keyFramesDecoded"
            " hugeFramesSent freezeCount pauseCount nackCount pliCount firCount"
            " qualityLimitationResolutionChanges concealedSamples silentConcealedSamples"
            " concealmentEvents insertedSamplesForDeceleration removedSamplesForAcceleration"
            " totalSamplesReceived jitterBufferEmittedCount fecPacketsReceived"
            " fecPacketsDiscarded reportsSent reportsReceived roundTripTimeMeasurements"
            " requestsSent requestsReceived responsesSent responsesReceived"
            " consentRequestsSent bytesDiscardedOnSend packetsDiscardedOnSend"
            " encodingIndex payloadType clockRate channels port priority"
            " selectedCandidatePairChanges dataChannelsOpened dataChannelsClosed"
            " messagesSent messagesReceived totalEncodedBytesTarget relatedPort"
            " dataChannelIdentifier width height frames synthesizedSamplesEvents"
            " totalSamplesCount",
        ),
        *columns(
            "float",
            "rtc_data.",
            "fractionLost jitter roundTripTime currentRoundTripTime totalRoundTripTime"
            " availableOutgoingBitrate availableIncomingBitrate framesPerSecond"
            " totalFreezesDuration totalPausesDuration totalSamplesDuration audioLevel"
            " totalAudioEnergy targetBitrate totalEncodeTime totalDecodeTime"
            " totalProcessingDelay totalPacketSendDelay jitterBufferDelay"
            " jitterBufferTargetDelay jitterBufferMinimumDelay totalInterFrameDelay"
            " totalSquaredInterFrameDelay lastPacketSentTimestamp"
            " lastPacketReceivedTimestamp synthesizedSamplesDuration totalPlayoutDelay",
        ),
        *columns(
            "bool",
            "rtc_data.",
            "active nominated writable powerEfficientEncoder powerEfficientDecoder",
        ),
        *columns("json", "rtc_data.", "qualityLimitationDurations"),
    ),
)

# session_webhook.jsonl: {id, timestamp, req: {type: session.*, ...}} or a webhook body.
SESSIONS = Table(
    name="sessions",
    kind="sora_session",
    description="Sora session webhooks: session.created, session.updated, session.destroyed.",
    columns=(
        Column("log_id", "id", ("id",)),
        Column("event", "string", ("req.type",)),
        Column("event_id", "id", ("req.id",)),
        Column("node_name", "string", ("req.node_name",)),
        Column("version", "string", ("req.version",)),
        Column("channel_id", "id", ("req.channel_id",)),
        Column("session_id", "id", ("req.session_id",)),
        Column("created_at", "time", ("req.created_timestamp",)),
        Column("destroyed_at", "time", ("req.destroyed_timestamp",)),
        Column("max_connections", "int", ("req.max_connections",)),
        Column("total_connections", "int", ("req.total_connections",)),
        Column("connections", "json", ("req.connections",)),
        Column("synthetic", "bool", ("req.synthetic",)),  # the entity tracker's end
    ),
)

# connection.jsonl: one line per connection at teardown.
CONNECTIONS = Table(
    name="connections",
    kind="sora_connection",
    description="Sora connection logs: one row per connection when it ends.",
    columns=(
        Column("log_id", "id", ("id",)),
        Column("node_name", "string", ("node_name",)),
        Column("version", "string", ("version",)),
        Column("channel_id", "id", ("channel_id",)),
        Column("session_id", "id", ("session_id",)),
        Column("connection_id", "id", ("connection_id",)),
        Column("client_id", "id", ("client_id",)),
        Column("bundle_id", "id", ("bundle_id",)),
        Column("role", "string", ("role",)),
        Column("created_at", "time", ("created_timestamp", "created_time")),
        Column("destroyed_at", "time", ("destroyed_timestamp", "destroyed_time")),
        Column("reason", "string", ("reason", "destroyed_reason", "disconnect_reason")),
        Column("audio", "json", ("audio",)),
        Column("video", "json", ("video",)),
        Column("sora_client", "json", ("sora_client",)),
        Column("simulcast", "bool", ("simulcast",)),
        Column("spotlight", "bool", ("spotlight",)),
    ),
)

# event/auth/stats webhook logs (and their _error twins), signaling.jsonl, api.jsonl.
SORA_EVENTS = Table(
    name="sora_events",
    kind="sora_event",
    description="Sora event, auth and stats webhooks, signaling and API logs.",
    columns=(
        Column("log_id", "id", ("id",)),
        Column("event", "string", ("req.type", "operation")),
        Column("url", "string", ("url",)),
        Column("node_name", "string", ("req.node_name", "node_name")),
        Column("channel_id", "id", ("req.channel_id", "channel_id")),
        Column("session_id", "id", ("req.session_id", "session_id")),
        Column("connection_id", "id", ("req.connection_id", "connection_id")),
        Column("client_id", "id", ("req.client_id", "client_id")),
        Column("request", "json", ("json",)),
        Column("synthetic", "bool", ("req.synthetic",)),  # the entity tracker's end
        Column("response", "json", ("res",)),
    ),
)

SORA_TABLES = (RTC_STATS, SESSIONS, CONNECTIONS, SORA_EVENTS)
