/** A start-up failure the operator can fix; its message is the whole story. */
export class StartupError extends Error {
  override readonly name = "StartupError";
}
