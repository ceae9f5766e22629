// A call with this worker's agent in React, on LiveKit's own components: the agent's state
// (its `lk.agent.state` attribute), the live transcript (`lk.transcription` text streams) and
// the worker's `voice-agent` events. `serverUrl` and `token` come from your backend, which got
// them from `POST /v1/voice-sessions` (never put an API key in the browser).
import { useEffect, useState } from "react";
import {
  LiveKitRoom,
  RoomAudioRenderer,
  useRoomContext,
  useTranscriptions,
  useVoiceAssistant,
} from "@livekit/components-react";
import { RoomEvent } from "livekit-client";

const TOPIC = "voice-agent";

function Agent() {
  const room = useRoomContext();
  const { state } = useVoiceAssistant(); // "connecting", "listening", "thinking", "speaking"
  const transcriptions = useTranscriptions(); // the caller's and the agent's words, live
  const [ended, setEnded] = useState(null);

  useEffect(() => {
    const onData = (payload, participant, kind, topic) => {
      if (topic !== TOPIC) return;
      const event = JSON.parse(new TextDecoder().decode(payload));
      if (event.type === "call_ended") setEnded(event); // { reason, duration }
    };
    room.on(RoomEvent.DataReceived, onData);
    return () => room.off(RoomEvent.DataReceived, onData);
  }, [room]);

  const endCall = () =>
    room.localParticipant.publishData(
      new TextEncoder().encode(JSON.stringify({ type: "end_call" })),
      { reliable: true, topic: TOPIC },
    );

  return (
    <section>
      <p>
        Agent: <strong data-testid="agent-state">{state}</strong>
      </p>
      <ol>
        {transcriptions.map((t) => (
          <li key={t.streamInfo.id}>{t.text}</li>
        ))}
      </ol>
      {ended ? (
        <p data-testid="ended">
          Call ended ({ended.reason}) after {Math.round(ended.duration)} s
        </p>
      ) : (
        <button onClick={endCall}>End call</button>
      )}
    </section>
  );
}

export function VoiceCall({ serverUrl, token }) {
  return (
    <LiveKitRoom serverUrl={serverUrl} token={token} connect audio>
      <RoomAudioRenderer />
      <Agent />
    </LiveKitRoom>
  );
}
