// Hash routes (#/, #/submit, #/jobs/<id>, #/agents): the service serves one page at GET /.

export function navigate(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

export const JOB_ID = /^[0-9a-f]{32}$/;
