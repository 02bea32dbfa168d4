/*! Chat widget of the chatbot platform. Licensed under the Apache License 2.0.
 * Paste the snippet (GET /api/chatbots/{id}/snippet) into a page; this script draws a launcher
 * and a chat panel in a Shadow DOM and talks to POST /api/public/{id}/query with the chatbot's
 * publishable key. No dependencies, no build step. Everything from the server (answers,
 * sources, the welcome message) is rendered as text nodes, never as HTML. */
(function () {
  "use strict";

  var TEXT = {
    en: {
      open: "Open chat", close: "Close chat", newChat: "New conversation", send: "Send",
      input: "Your question", placeholder: "Ask a question…", typing: "The assistant is typing…",
      log: "Conversation", you: "You", bot: "Assistant", sources: "Sources", page: "p.",
      retry: "Retry", loading: "Connecting…",
      rate: "You are sending messages too quickly. Please try again in {s} seconds.",
      unavailable: "The assistant is unavailable right now. Please try again later.",
      notAllowed: "This chat is not enabled on this website.",
      network: "The chat service cannot be reached. Check your connection and try again.",
      badKey: "This chat is not set up correctly on this website.",
      gone: "This chat is no longer available.",
      tooLong: "Please keep your question under {n} characters.",
      failed: "Something went wrong. Please try again."
    },
    de: {
      open: "Chat öffnen", close: "Chat schließen", newChat: "Neues Gespräch", send: "Senden",
      input: "Ihre Frage", placeholder: "Stellen Sie eine Frage…", typing: "Der Assistent schreibt…",
      log: "Gespräch", you: "Sie", bot: "Assistent", sources: "Quellen", page: "S.",
      retry: "Erneut versuchen", loading: "Verbindung wird hergestellt…",
      rate: "Sie senden zu schnell Nachrichten. Bitte versuchen Sie es in {s} Sekunden erneut.",
      unavailable: "Der Assistent ist gerade nicht verfügbar. Bitte versuchen Sie es später erneut.",
      notAllowed: "Dieser Chat ist für diese Website nicht freigeschaltet.",
      network: "Der Chat-Dienst ist nicht erreichbar. Prüfen Sie Ihre Verbindung und versuchen Sie es erneut.",
      badKey: "Dieser Chat ist auf dieser Website nicht richtig eingerichtet.",
      gone: "Dieser Chat ist nicht mehr verfügbar.",
      tooLong: "Bitte fassen Sie Ihre Frage in weniger als {n} Zeichen.",
      failed: "Etwas ist schiefgelaufen. Bitte versuchen Sie es erneut."
    }
  };
  var KEEP_MESSAGES = 40;
  var DEFAULT_ACCENT = "#1d4ed8";

  var CSS =
    ":host{all:initial!important;display:block!important;position:fixed!important;z-index:2147483647!important;" +
    "bottom:20px!important;right:20px!important;left:auto!important;top:auto!important;width:auto!important;" +
    "height:auto!important;margin:0!important;padding:0!important;border:0!important;visibility:visible!important;" +
    "opacity:1!important;transform:none!important}" +
    ":host([data-position=left]){left:20px!important;right:auto!important}" +
    "*{box-sizing:border-box;font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;" +
    "font-size:15px;line-height:1.45;letter-spacing:normal;text-transform:none}" +
    "[hidden]{display:none!important}" +
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}" +
    "button{cursor:pointer;border:0;margin:0;font:inherit;color:inherit;background:none}" +
    "button:focus-visible,textarea:focus-visible,a:focus-visible{outline:3px solid #111;outline-offset:2px}" +
    ".launcher{display:flex;align-items:center;justify-content:center;width:56px;height:56px;border-radius:50%;" +
    "background:var(--accent);color:var(--on-accent);box-shadow:0 4px 14px rgba(0,0,0,.3)}" +
    ".launcher svg{width:28px;height:28px;fill:currentColor}" +
    ".panel{display:flex;flex-direction:column;position:absolute;bottom:72px;right:0;width:380px;height:560px;" +
    "max-height:calc(100vh - 100px);background:#fff;color:#1f2328;border-radius:14px;overflow:hidden;" +
    "box-shadow:0 10px 40px rgba(0,0,0,.25);border:1px solid #d0d7de}" +
    ":host([data-position=left]) .panel{right:auto;left:0}" +
    "header{display:flex;align-items:center;gap:4px;padding:10px 8px 10px 16px;background:var(--accent);color:var(--on-accent)}" +
    "h2{flex:1;margin:0;font-size:16px;font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}" +
    "header button{width:36px;height:36px;border-radius:8px;font-size:20px;line-height:1}" +
    "header button:focus-visible{outline-color:var(--on-accent)}" +
    ".log{flex:1;overflow-y:auto;padding:14px;display:flex;flex-direction:column;gap:10px}" +
    ".msg{max-width:88%;padding:9px 12px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere}" +
    ".msg p,.msg ul,.msg ol{margin:0 0 6px}.msg p:last-child,.msg ul:last-child,.msg ol:last-child{margin-bottom:0}" +
    ".msg ul,.msg ol{padding-left:20px;white-space:normal}" +
    ".msg code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;background:rgba(0,0,0,.06);padding:0 3px;border-radius:4px}" +
    ".msg a{color:#0b4bc4;text-decoration:underline}" +
    ".user{align-self:flex-end;background:var(--accent);color:var(--on-accent)}" +
    ".bot{align-self:flex-start;background:#f1f3f5;color:#1f2328}" +
    ".who{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}" +
    ".msg .sources{list-style:none;margin:2px 0 0;padding:0;white-space:normal}" +
    ".sources li,.sources-label{font-size:13px;color:#4b535d}" +
    ".sources-label{display:block;margin-top:8px;padding-top:6px;border-top:1px solid #d0d7de;font-weight:600}" +
    ".note{margin-top:6px;color:#a40e26;white-space:normal}" +
    ".note button{display:inline-block;margin-left:6px;padding:2px 8px;border-radius:6px;border:1px solid #a40e26;color:#a40e26;font-size:13px}" +
    ".typing span{display:inline-block;width:7px;height:7px;margin:0 2px;border-radius:50%;background:#4b535d;animation:b 1.2s infinite}" +
    ".typing span:nth-child(2){animation-delay:.2s}.typing span:nth-child(3){animation-delay:.4s}" +
    "@keyframes b{0%,80%,100%{opacity:.3}40%{opacity:1}}" +
    "@media (prefers-reduced-motion:reduce){.typing span{animation:none}}" +
    ".state{margin:0 14px 8px;padding:8px 10px;border-radius:8px;background:#fff4e5;color:#5c3b00;font-size:14px}" +
    "form{display:flex;gap:8px;align-items:flex-end;padding:10px;border-top:1px solid #d0d7de}" +
    "textarea{flex:1;resize:none;min-height:40px;max-height:120px;padding:9px 10px;border:1px solid #6e7781;border-radius:10px;" +
    "background:#fff;color:#1f2328}textarea::placeholder{color:#5f6670}textarea:disabled{background:#f1f3f5}" +
    ".send{height:40px;padding:0 14px;border-radius:10px;background:var(--accent);color:var(--on-accent);font-weight:600}" +
    ".send:disabled{opacity:.55;cursor:default}" +
    "@media (max-width:480px){:host([data-open]){inset:0!important;width:100%!important;height:100%!important}" +
    ":host([data-open]) .panel{position:fixed;inset:0;width:100%;height:100%;max-height:none;border-radius:0;border:0}" +
    ":host([data-open]) .launcher{display:none}}";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  // --- colours: the accent's text colour is whichever of white or near-black reads better ---
  function luminance(hex) {
    var c = hex.length === 4 ? hex.replace(/#(.)(.)(.)/, "#$1$1$2$2$3$3") : hex;
    var rgb = [1, 3, 5].map(function (i) {
      var v = parseInt(c.substr(i, 2), 16) / 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2];
  }
  function contrast(a, b) {
    var x = luminance(a), y = luminance(b);
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
  }
  function onAccent(accent) {
    return contrast(accent, "#ffffff") >= contrast(accent, "#111111") ? "#ffffff" : "#111111";
  }

  // --- a light markdown subset, built as DOM nodes: paragraphs, lists, **bold**, `code`, links ---
  var INLINE = /\*\*([^*\n]+)\*\*|`([^`\n]+)`|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)|(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"])/g;

  function safeLink(href, label) {
    var url;
    try { url = new URL(href); } catch (e) { return document.createTextNode(label); }
    if (url.protocol !== "http:" && url.protocol !== "https:") return document.createTextNode(label);
    return el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer", text: label });
  }

  function inline(parent, text) {
    var last = 0, m;
    INLINE.lastIndex = 0;
    while ((m = INLINE.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      if (m[1]) parent.appendChild(el("strong", { text: m[1] }));
      else if (m[2]) parent.appendChild(el("code", { text: m[2] }));
      else if (m[3]) parent.appendChild(safeLink(m[4], m[3]));
      else parent.appendChild(safeLink(m[5], m[5]));
      last = INLINE.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function renderMarkdown(target, text) {
    target.textContent = "";
    var list = null, para = null;
    text.split("\n").forEach(function (line) {
      var item = /^\s*(?:([-*•])|(\d+)[.)])\s+(.*)$/.exec(line);
      if (item) {
        var kind = item[1] ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== kind) { list = target.appendChild(el(kind)); }
        inline(list.appendChild(el("li")), item[3]);
        para = null;
      } else if (!line.trim()) {
        list = para = null;
      } else {
        list = null;
        if (para) para.appendChild(el("br"));
        else para = target.appendChild(el("p"));
        inline(para, line);
      }
    });
  }

  // --- storage: the conversation lives in the visitor's browser, per chatbot ---
  function store(key) {
    var memory = null;
    return {
      load: function () {
        try { return JSON.parse(window.localStorage.getItem(key)) || memory; } catch (e) { return memory; }
      },
      save: function (value) {
        memory = value;
        try { window.localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* blocked or full */ }
      }
    };
  }

  // --- Server-Sent Events over a fetch body (EventSource cannot POST) ---
  async function readEvents(response, onEvent) {
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      var blocks = buffer.split(/\r?\n\r?\n/);
      buffer = blocks.pop();
      blocks.forEach(function (block) {
        var name = "message", data = [];
        block.split(/\r?\n/).forEach(function (line) {
          if (line.indexOf("event:") === 0) name = line.slice(6).trim();
          else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
        });
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      });
    }
  }

  function Widget(script) {
    var ds = script.dataset;
    this.id = ds.chatbotId;
    this.key = ds.apiKey;
    this.base = (ds.apiBase || new URL(script.src, location.href).origin).replace(/\/+$/, "");
    var lang = (ds.lang || document.documentElement.lang || navigator.language || "en").slice(0, 2).toLowerCase();
    this.t = TEXT[lang] || TEXT.en;
    this.title = ds.title || "";
    this.maxLength = 2000;
    this.accent = /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.test(ds.accent || "") ? ds.accent : DEFAULT_ACCENT;
    this.storage = store("chatbot-widget:" + this.id);
    this.state = this.storage.load() || { session: null, messages: [], open: false };
    this.busy = false;
    this.build(ds.position === "left" ? "left" : "right");
    this.restore();
    // data-open: not on phones, where the panel would cover the page the visitor came to read.
    if ((ds.open === "true" && window.innerWidth > 480) || this.state.open) this.open(false);
    this.loadConfig(true);
  }

  Widget.prototype.build = function (position) {
    var t = this.t, self = this;
    this.host = document.createElement("chatbot-widget");
    this.host.setAttribute("data-position", position);
    var root = this.host.attachShadow({ mode: "open" });
    var css = CSS.replace(":host{", ":host{--accent:" + this.accent + ";--on-accent:" + onAccent(this.accent) + ";");
    if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet && CSSStyleSheet.prototype.replaceSync) {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(css); // constructed sheets are not blocked by a page's style-src CSP
      root.adoptedStyleSheets = [sheet];
    } else {
      root.appendChild(el("style", { text: css }));
    }
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z");
    svg.appendChild(path);
    this.launcher = el("button", { type: "button", class: "launcher", "aria-label": t.open, "aria-expanded": "false", "aria-controls": "panel" }, [svg]);
    this.titleEl = el("h2", { id: "title", text: this.title || t.bot });
    this.newButton = el("button", { type: "button", class: "new", "aria-label": t.newChat, title: t.newChat, text: "↺" });
    this.closeButton = el("button", { type: "button", class: "close", "aria-label": t.close, title: t.close, text: "×" });
    this.log = el("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": t.log });
    this.stateEl = el("p", { class: "state", role: "status", hidden: "" });
    this.input = el("textarea", { id: "input", rows: "1", maxlength: String(this.maxLength), placeholder: t.placeholder });
    this.sendButton = el("button", { type: "submit", class: "send", text: t.send });
    this.form = el("form", {}, [el("label", { for: "input", class: "sr", text: t.input }), this.input, this.sendButton]);
    this.panel = el("div", { id: "panel", class: "panel", role: "dialog", "aria-modal": "false", "aria-labelledby": "title", hidden: "" },
      [el("header", {}, [this.titleEl, this.newButton, this.closeButton]), this.log, this.stateEl, this.form]);
    root.appendChild(this.launcher);
    root.appendChild(this.panel);

    this.launcher.addEventListener("click", function () { self.isOpen() ? self.close() : self.open(true); });
    this.closeButton.addEventListener("click", function () { self.close(); });
    this.newButton.addEventListener("click", function () { self.reset(); });
    root.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && self.isOpen()) { e.preventDefault(); self.close(); }
    });
    this.form.addEventListener("submit", function (e) { e.preventDefault(); self.submit(); });
    this.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); self.submit(); }
    });
    (document.body || document.documentElement).appendChild(this.host);
  };

  Widget.prototype.isOpen = function () { return !this.panel.hidden; };

  Widget.prototype.open = function (focus) {
    this.panel.hidden = false;
    this.host.setAttribute("data-open", "");
    this.launcher.setAttribute("aria-expanded", "true");
    this.launcher.setAttribute("aria-label", this.t.close);
    this.remember({ open: true });
    this.scroll();
    if (focus) this.input.disabled ? this.closeButton.focus() : this.input.focus();
  };

  Widget.prototype.close = function () {
    this.panel.hidden = true;
    this.host.removeAttribute("data-open");
    this.launcher.setAttribute("aria-expanded", "false");
    this.launcher.setAttribute("aria-label", this.t.open);
    this.remember({ open: false });
    this.launcher.focus();
  };

  Widget.prototype.remember = function (changes) {
    Object.keys(changes).forEach(function (k) { this.state[k] = changes[k]; }, this);
    this.state.messages = this.state.messages.slice(-KEEP_MESSAGES);
    this.storage.save(this.state);
  };

  Widget.prototype.scroll = function () { this.log.scrollTop = this.log.scrollHeight; };

  // --- the conversation on screen ---
  Widget.prototype.bubble = function (role, text) {
    var item = el("div", { class: "msg " + role });
    item.appendChild(el("span", { class: "who", text: (role === "user" ? this.t.you : this.t.bot) + ": " }));
    var body = item.appendChild(el("div", { class: "text" }));
    if (role === "bot") renderMarkdown(body, text); else body.textContent = text;
    this.log.appendChild(item);
    this.scroll();
    return item;
  };

  Widget.prototype.showSources = function (item, sources) {
    var seen = {}, list = el("ul", { class: "sources", "aria-label": this.t.sources }), t = this.t;
    (sources || []).forEach(function (s) {
      var label = s.filename + (s.heading ? " \u203a " + s.heading : "") +
        (s.page ? ", " + t.page + " " + s.page : "");
      if (!s.filename || seen[label]) return;
      seen[label] = true;
      list.appendChild(el("li", { text: label }));
    });
    if (!list.childNodes.length) return;
    item.appendChild(el("span", { class: "sources-label", "aria-hidden": "true", text: t.sources }));
    item.appendChild(list);
  };

  Widget.prototype.welcome = function () {
    if (!this.welcomeText) return;
    var item = this.bubble("bot", this.welcomeText);
    item.classList.add("welcome");
    this.log.insertBefore(item, this.log.firstChild); // above a conversation already drawn
  };

  Widget.prototype.restore = function () {
    this.log.textContent = "";
    this.welcome();
    this.state.messages.forEach(function (m) {
      var item = this.bubble(m.role, m.text);
      if (m.sources) this.showSources(item, m.sources);
    }, this);
  };

  Widget.prototype.reset = function () {
    if (this.abort) this.abort.abort();
    this.remember({ session: null, messages: [] });
    this.restore();
    this.setState(this.blocked || "");
    this.input.focus();
  };

  Widget.prototype.setState = function (message) {
    this.stateEl.textContent = message;
    this.stateEl.hidden = !message;
  };

  Widget.prototype.setBlocked = function (message) {
    this.blocked = message;
    this.setState(message);
    this.input.disabled = !!message;
    this.sendButton.disabled = !!message || this.busy;
  };

  // --- talking to the server ---
  Widget.prototype.request = function (path, options) {
    options = options || {};
    options.headers = Object.assign({ "X-API-Key": this.key }, options.headers || {});
    return fetch(this.base + "/api/public/" + encodeURIComponent(this.id) + path, options);
  };

  Widget.prototype.errorText = function (status, code, retryAfter) {
    var t = this.t;
    if (status === 429) return t.rate.replace("{s}", retryAfter || "a few");
    if (status === 403) return t.notAllowed;
    if (status === 401) return t.badKey;
    if (status === 404) return t.gone;
    if (status === 422) return t.tooLong.replace("{n}", this.maxLength);
    if (status === 402 || status === 409 || status === 503 || code === "llm_unavailable") return t.unavailable;
    return t.failed;
  };

  // first: the page just loaded (draw the welcome); otherwise a re-check after a failed question.
  Widget.prototype.loadConfig = async function (first) {
    var response;
    this.setState(this.t.loading);
    try {
      response = await this.request("", { method: "GET", headers: { Accept: "application/json" } });
    } catch (e) {
      this.setState(this.t.network);
      this.host.setAttribute("data-state", "offline");
      return false;
    }
    if (!response.ok) {
      var status = response.status;
      var message = this.errorText(status, null, response.headers.get("Retry-After"));
      if (status === 401 || status === 403 || status === 404) {
        this.setBlocked(message);
        this.host.setAttribute("data-state", status === 403 ? "not-allowed" : "unavailable");
      } else {
        this.setState(message);
      }
      return false;
    }
    var config = await response.json();
    this.maxLength = config.question_max_length || this.maxLength;
    this.input.setAttribute("maxlength", String(this.maxLength));
    if (!this.title) this.titleEl.textContent = config.name;
    this.welcomeText = config.welcome_message || "";
    // The conversation was drawn from storage at start: only the welcome is missing. Never
    // redraw it here: a question asked before the config arrived would lose its answer.
    if (first) this.welcome();
    this.setBlocked("");
    this.host.setAttribute("data-state", "ready");
    return true;
  };

  Widget.prototype.submit = function () {
    var question = this.input.value.trim();
    if (!question || this.busy || this.blocked) return;
    this.input.value = "";
    this.state.messages.push({ role: "user", text: question });
    this.remember({});
    this.bubble("user", question);
    this.ask(question);
  };

  Widget.prototype.ask = async function (question) {
    var self = this, t = this.t, text = "", sources = null, status = 0, code = null, retryAfter = null;
    this.busy = true;
    this.sendButton.disabled = true;
    this.setState("");
    var reply = this.bubble("bot", "");
    var body = reply.querySelector(".text");
    reply.setAttribute("data-state", "waiting");
    var typing = el("span", { class: "typing" }, [el("span"), el("span"), el("span"), el("span", { class: "sr", text: t.typing })]);
    body.appendChild(typing);
    this.log.setAttribute("aria-busy", "true");
    var abort = this.abort = new AbortController();
    try {
      var response = await this.request("/query", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ question: question, session_id: this.state.session || undefined, stream: true }),
        signal: abort.signal
      });
      status = response.status;
      if (!response.ok) {
        var error = await response.json().catch(function () { return {}; });
        code = error.code;
        retryAfter = response.headers.get("Retry-After");
      } else {
        await readEvents(response, function (name, data) {
          if (name === "sources") sources = data;
          else if (name === "token") {
            if (!text) body.textContent = "";
            text += data.text;
            body.textContent = text;
            reply.setAttribute("data-state", "streaming");
            self.scroll();
          } else if (name === "done") {
            self.state.session = data.session_id;
            reply.setAttribute("data-state", "done");
          } else if (name === "error") {
            status = 503;
            code = data.code;
          }
        });
        if (reply.getAttribute("data-state") !== "done" && !code) status = 0;
      }
    } catch (e) {
      if (abort.signal.aborted) return;
      status = 0;
    } finally {
      if (this.abort === abort) this.abort = null;
      this.busy = false;
      this.sendButton.disabled = !!this.blocked;
      this.log.setAttribute("aria-busy", "false");
    }
    if (reply.getAttribute("data-state") === "done") {
      renderMarkdown(body, text);
      this.showSources(reply, sources);
      var kept = (sources || []).map(function (s) {
        return { filename: s.filename, heading: s.heading, page: s.page };
      });
      this.state.messages.push({ role: "bot", text: text, sources: kept });
      this.remember({});
      this.scroll();
      return;
    }
    if (status === 0) {
      // A fetch that fails outright: the network, or a browser hiding a CORS refusal. Ask again.
      var reachable = await this.loadConfig(false);
      if (this.blocked) status = 403;
      else if (!reachable) this.setState("");
    }
    this.fail(reply, text, status === 0 ? t.network : this.errorText(status, code, retryAfter), question);
  };

  Widget.prototype.fail = function (reply, partial, message, question) {
    var self = this;
    var body = reply.querySelector(".text");
    body.textContent = partial;
    reply.setAttribute("data-state", "error");
    var note = el("div", { class: "note", role: "alert" });
    note.appendChild(document.createTextNode(message));
    if (!this.blocked) {
      var retry = el("button", { type: "button", text: this.t.retry });
      retry.addEventListener("click", function () {
        if (self.busy) return;
        reply.remove();
        self.ask(question);
      });
      note.appendChild(retry);
    }
    reply.appendChild(note);
    this.scroll();
  };

  function start() {
    var scripts = document.querySelectorAll("script[data-chatbot-id]");
    Array.prototype.forEach.call(scripts, function (script) {
      if (script.hasAttribute("data-widget-started") || !script.dataset.apiKey) return;
      script.setAttribute("data-widget-started", "");
      try { new Widget(script); } catch (e) { if (window.console) console.error("chat widget:", e); }
    });
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
