// The README's React snippet, mounted as an app would: the session's URL and token in the
// fragment (tests/browser/test_react_snippet.py builds this with esbuild).
import { createRoot } from "react-dom/client";
import { VoiceCall } from "../../../examples/react/VoiceCall.jsx";

const session = new URLSearchParams(location.hash.slice(1));
createRoot(document.getElementById("root")).render(
  <VoiceCall serverUrl={session.get("url")} token={session.get("token")} />,
);
