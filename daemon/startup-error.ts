/** A start-up failure the operator can fix; its message is the whole story. */
export class StartupError extends Error {
  override readonly name = "StartupError";

  /** 1: the host is in the way (the default); 2: the configuration contradicts itself. */
  constructor(message: string, readonly exitCode: 1 | 2 = 1) {
    super(message);
  }
}
