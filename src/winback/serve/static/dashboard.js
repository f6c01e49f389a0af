// The dashboard's refresh: each section asks the service every so often whether its figures changed
// (the service answers 204 when they did not) and, when they did, replaces itself with the new ones,
// running their chart scripts. A section still being computed asks again every two seconds.
(function () {
  "use strict";
  var setting = document.querySelector('meta[name="winback-refresh"]');
  var refresh = 1000 * Number(setting ? setting.content : 30);

  function schedule(element) {
    var state = element.dataset.state;
    setTimeout(update, state === "ready" ? refresh : 2000, element);
  }

  function runScripts(element) {
    element.querySelectorAll("script").forEach(function (old) {
      var script = document.createElement("script");
      script.text = old.text;
      old.replaceWith(script);
    });
  }

  function update(element) {
    var src = element.dataset.src;
    var known = encodeURIComponent(element.dataset.version + "." + element.dataset.state);
    var url = src + (src.indexOf("?") < 0 ? "?" : "&") + "known=" + known;
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/dashboard/login?next=" + encodeURIComponent(location.pathname + location.search));
          return null;
        }
        if (response.status === 204) {
          schedule(element);
          return null;
        }
        return response.text().then(function (text) {
          var holder = document.createElement("div");
          holder.innerHTML = text;
          var fresh = holder.querySelector(".fragment");
          if (!fresh) {
            schedule(element);
            return;
          }
          if (window.Plotly) {
            element.querySelectorAll(".js-plotly-plot").forEach(function (plot) { window.Plotly.purge(plot); });
          }
          element.replaceWith(fresh);
          runScripts(fresh);
          schedule(fresh);
        });
      })
      .catch(function () { setTimeout(update, refresh, element); });
  }

  document.querySelectorAll(".fragment[data-src]").forEach(schedule);
})();
